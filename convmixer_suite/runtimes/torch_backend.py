"""PyTorch: the reference runtime, the checkpoint's own model on the CPU or cuda:N."""
from convmixer_suite.runtimes import cuda
from convmixer_suite.runtimes.base import Backend, check_batch
from convmixer_suite.util.errors import SettingError, UserError
from convmixer_suite.util.libraries import import_library


class TorchBackend(Backend):
    """The PyTorch reference: convmixer_net's model with the checkpoint's weights, CPU or cuda:N.

    On CUDA the model runs channels_last, fp16/bf16 with its weights converted (half / bfloat16); batches go to
    the device as float32 and are converted there, logits come back float32. fp32 on CUDA is IEEE fp32 (TF32
    off), so it is the true fp32 twin the reduced precisions are measured against. ``compile_mode`` wraps the
    model in torch.compile (``reduce-overhead``: with CUDA graphs), one specialisation per batch size.
    """
    name = "torch"
    supported_precisions = ("fp32", "fp16", "bf16")
    supported_devices = ("cpu", "cuda")
    compiles = True
    DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

    def _load(self):
        torch = import_library("torch", f"the {self.name} backend",
                               "pip install torch --index-url https://download.pytorch.org/whl/cpu")
        self.torch = torch
        self.version = torch.__version__
        if self.model_path.suffix.lower() in (".onnx", ".om"):
            raise UserError(f"{self.model_path}: the torch backend loads the checkpoint "
                            f"(.pth, .pth.tar or .safetensors), not a {self.model_path.suffix} file")
        if self.device_kind == "cuda":
            self.torch_device = cuda.cuda_device(torch, self.device, self.device_index, self.precision)
        elif self.precision != "fp32":
            raise SettingError("precision", f"{self.precision} on the torch backend runs on --device cuda:N; on a "
                                            f"CPU use --backend openvino (bf16 where the CPU has it, fp16 where it has "
                                            f"AVX512_FP16 or AMX-FP16)")
        else:
            self.torch_device = torch.device("cpu")
        if self.threads:
            torch.set_num_threads(self.threads)
        from convmixer_suite.model.checkpoint import load_model
        model, self.spec = load_model(self.model_path)
        self.dtype = getattr(torch, self.DTYPES[self.precision])
        self.model = self.prepare(model)
        self.pinned = {}  # (role, shape, slot) -> page-locked host buffer, for predict_each on CUDA

    def prepare(self, model):
        """The model on its device in eval mode; on CUDA in the run's dtype and channels_last; compiled if asked."""
        torch = self.torch
        if self.device_kind == "cuda":
            model = model.to(device=self.torch_device, dtype=self.dtype, memory_format=torch.channels_last)
        model = model.to(self.torch_device).eval()
        return torch.compile(model, mode=self.compile_mode, dynamic=False) if self.compile_mode else model

    def run_model(self, x):
        """float32 on the device -> float32 logits on the device (converted to the model's dtype and layout)."""
        if self.device_kind == "cuda":
            x = x.to(self.dtype).contiguous(memory_format=self.torch.channels_last)
        if self.compile_mode:
            self.torch.compiler.cudagraph_mark_step_begin()  # each call a new step: its outputs are copied out first
        return self.model(x).float()

    def predict(self, batch):
        # inference_mode from torch 1.9 on; no_grad on the guide's torch 1.5
        with getattr(self.torch, "inference_mode", self.torch.no_grad)():
            logits = self.run_model(self.torch.from_numpy(check_batch(batch)).to(self.torch_device))
            return logits.cpu().numpy()

    def predict_each(self, batches):
        """On CUDA: batch k+1 is copied (page-locked buffer, copy stream) and queued while batch k runs; the
        latency of a batch is its device time from its start to its logits back on the host (CUDA events)."""
        if self.device_kind != "cuda":
            yield from super().predict_each(batches)
            return
        copy_stream = self.torch.cuda.Stream(device=self.torch_device)
        previous = None
        for slot, batch in enumerate(batches):
            launched = self._launch(self._upload(check_batch(batch), slot % 2, copy_stream), slot % 2)
            if previous is not None:
                yield self._collect(*previous)
            previous = launched
        if previous is not None:
            yield self._collect(*previous)

    def _pinned_buffer(self, role, shape, slot):
        key = (role, tuple(shape), slot)
        if key not in self.pinned:
            self.pinned[key] = self.torch.empty(shape, dtype=self.torch.float32, pin_memory=True)
        return self.pinned[key]

    def _upload(self, batch, slot, copy_stream):
        """Start copying ``batch`` to the device on ``copy_stream``: (device tensor, event set when it is there)."""
        torch = self.torch
        host = self._pinned_buffer("in", batch.shape, slot)
        host.numpy()[...] = batch  # the buffer of batch k-1, whose copy finished before its logits came back
        with torch.cuda.stream(copy_stream):
            x = host.to(self.torch_device, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(copy_stream)
        return x, ready

    def _launch(self, uploaded, slot):
        """Queue the model on the batch and the copy of its logits to the host, behind the work queued before."""
        torch = self.torch
        x, ready = uploaded
        compute = torch.cuda.current_stream(self.torch_device)
        compute.wait_event(ready)
        x.record_stream(compute)  # made on the copy stream, used on this one: not to be reused before it is done
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(compute)
        with torch.inference_mode():
            logits = self.run_model(x)
            host = self._pinned_buffer("out", logits.shape, slot)
            host.copy_(logits, non_blocking=True)
        end.record(compute)
        return host, start, end

    @staticmethod
    def _collect(host, start, end):
        end.synchronize()
        return host.numpy().copy(), start.elapsed_time(end)
