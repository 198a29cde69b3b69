"""ONNX Runtime: the default runtime, on the CPU or, with onnxruntime-gpu, on CUDA or TensorRT."""
from convmixer_suite.runtimes import cuda
from convmixer_suite.runtimes.base import Backend, check_batch
from convmixer_suite.util.errors import SettingError, UserError, first_line
from convmixer_suite.util.libraries import import_library

# A session whose nodes must all run on the providers listed (no CPU fallback), and the start of its refusal when
# one cannot
DISABLE_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
CPU_FALLBACK_REFUSED = "fallback to CPU EP has been explicitly disabled"
# ONNX Runtime's exception types for a file it cannot take as a model (its other failures are its own)
NOT_A_MODEL = ("InvalidProtobuf", "InvalidGraph", "NoModel", "NoSuchFile", "NotImplemented")


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: CPUExecutionProvider unless --device asks for cuda:N or tensorrt:N. fp16: the CUDA provider
    runs the float16 ONNX (convmixer_suite.precision.fp16_onnx, float32 in and out), TensorRT its fp16 switch on the
    fp32 ONNX; the CPU provider takes no fp16."""
    name = "onnxruntime"
    supported_precisions = ("fp32", "fp16", "int8")
    supported_devices = ("cpu", "cuda", "tensorrt")
    PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}

    def _load(self):
        ort = import_library("onnxruntime", f"the {self.name} backend",
                             "pip install onnxruntime  (onnxruntime-gpu for --device cuda:N/tensorrt:N)")
        self.version = ort.__version__
        if self.precision == "fp16" and self.device_kind == "cpu":
            raise SettingError("precision", "fp16 on onnxruntime runs on --device cuda:N (a float16 ONNX) or "
                                            "tensorrt:N (TensorRT's fp16 switch); on a CPU, fp16 runs on --backend "
                                            "openvino where the CPU has AVX512_FP16 or AMX-FP16")
        wanted = self.PROVIDERS[self.device_kind]
        if wanted not in ort.get_available_providers():
            raise SettingError("device", f"{self.device}: this onnxruntime build has no {wanted} "
                                         f"(install onnxruntime-gpu, with CUDA/TensorRT, for it)", unavailable=True)
        path = self.onnx_for_precision()
        self.session = self.new_session(ort, path, wanted)
        if self.session.get_providers()[0] != wanted:
            raise SettingError("device", f"{self.device}: onnxruntime could not start {wanted} "
                                         f"(it fell back to {self.session.get_providers()[0]})", unavailable=True)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        first_dim = model_input.shape[0]
        self.batch_size = first_dim if isinstance(first_dim, int) else None

    def new_session(self, ort, path, wanted):
        """The session on the provider ``wanted``. A file that is not a model, and a GPU provider that cannot run
        every node, are refused in one line; any other failure is ONNX Runtime's own, raised with it as the cause."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        if wanted != "CPUExecutionProvider":
            # a node the GPU provider lacks a kernel for would run on the CPU, with copies on every call
            options.add_session_config_entry(DISABLE_CPU_FALLBACK, "1")
        if wanted == "TensorrtExecutionProvider":
            cuda.tensorrt_ieee_fp32()
        try:
            return ort.InferenceSession(str(path), options, providers=self.providers(wanted))
        except Exception as exc:  # onnxruntime raises exception types of its own, none of them a common base
            first = first_line(exc)
            if CPU_FALLBACK_REFUSED in first:
                raise SettingError("device", f"{self.device}: {wanted} cannot run every operator of {path.name} "
                                             f"(ONNX Runtime would run the rest on the CPU, copying tensors on every "
                                             f"call); run it on --device cpu, or another --precision") from exc
            if type(exc).__name__ in NOT_A_MODEL:
                raise UserError(f"{path}: onnxruntime cannot load this model: {first}") from exc
            raise RuntimeError(f"{path}: onnxruntime could not start a session on {wanted}: "
                               f"{type(exc).__name__}: {first}") from exc

    def providers(self, wanted):
        """The asked provider alone; TensorRT with the CUDA provider behind it for the operators TensorRT does not
        take. No CPU provider: every node runs on the GPU or the session is refused (DISABLE_CPU_FALLBACK, which
        ONNX Runtime refuses beside a CPU provider in the list). fp32 on CUDA is IEEE fp32 (``use_tf32`` 0), so
        that it is the true fp32 twin the reduced precisions are measured against; float16 work is unaffected."""
        if wanted == "CPUExecutionProvider":
            return [wanted]
        cuda_provider = ("CUDAExecutionProvider", {"device_id": self.device_index, "use_tf32": 0})
        if wanted == "TensorrtExecutionProvider":
            return [(wanted, dict(device_id=self.device_index, **self.tensorrt_options())), cuda_provider]
        return [cuda_provider]

    def tensorrt_options(self) -> dict:
        """TensorRT builds its engine from the fp32 ONNX, in fp16 where ``trt_fp16_enable`` allows, and IEEE fp32
        elsewhere (cuda.TF32_OVERRIDE); engines are cached beside the model (building one takes minutes), in a
        folder of their own apart from engines built with TF32. With the run's batch sizes known, one engine
        covers batch 1 to the largest of them and the fidelity gate's, tuned for the run's: TensorRT would
        otherwise build an engine for every new batch size of a dynamic batch axis."""
        cache = self.model_path.with_name(f"{self.model_path.stem}.trt-cache-ieee-fp32")
        options = {"trt_fp16_enable": self.precision == "fp16", "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": str(cache)}
        if self.batch_sizes:
            from convmixer_suite.precision.fidelity import GATE_IMAGES
            name = onnx_input_name(self.run_path)
            shape = "x".join(str(d) for d in self.input_shape)
            options.update(trt_profile_min_shapes=f"{name}:1x{shape}",
                           trt_profile_opt_shapes=f"{name}:{max(self.batch_sizes)}x{shape}",
                           trt_profile_max_shapes=f"{name}:{max(self.batch_sizes + (GATE_IMAGES,))}x{shape}")
        return options

    def runs_fp16_onnx(self) -> bool:
        return self.device_kind == "cuda"

    def predict(self, batch):
        return self.session.run(None, {self.input_name: check_batch(batch, self.input_shape)})[0]


def onnx_input_name(path) -> str:
    """The first input's name of an .onnx, read without its weights."""
    import onnx
    return onnx.load(str(path), load_external_data=False).graph.input[0].name
