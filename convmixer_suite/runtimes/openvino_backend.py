"""OpenVINO reading the exported .onnx, and its variant with ConvMixer's depthwise half-blocks on our own
operation (``depthwise_op``)."""
import logging

import numpy as np

from convmixer_suite.runtimes.base import Backend, check_batch
from convmixer_suite.util.errors import SettingError, UserError, first_line
from convmixer_suite.util.libraries import import_library

LOG = logging.getLogger(__name__)


class OpenVinoBackend(Backend):
    """OpenVINO reading the same .onnx; --precision bf16/fp16 set the inference precision hint. bf16 falls back
    to fp32 (with a notice) on a device without it; fp16 is refused on a device that does not report FP16
    (on CPUs: AVX512_FP16 or AMX-FP16)."""
    name = "openvino"
    supported_precisions = ("fp32", "fp16", "bf16", "int8")
    HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
    supported_devices = ("cpu", "gpu")

    def _load(self):
        ov = import_library("openvino", f"the {self.name} backend", "pip install openvino")
        self.version = ov.get_version()
        core = self.new_core(ov)
        device = self.openvino_device(core)
        if self.precision == "bf16" and not self.device_has_bf16(core, device):
            LOG.info(f"{device} lacks bf16 support; running fp32 instead")
            self.precision = "fp32"
        if self.precision == "fp16" and not self.device_has_fp16(core, device):
            raise SettingError("precision", f"fp16: OpenVINO's {device} has no fp16 inference here (its "
                                            f"OPTIMIZATION_CAPABILITIES: {', '.join(self.capabilities(core, device))}; "
                                            f"on a CPU fp16 needs AVX512_FP16 or AMX-FP16); use fp32 or bf16",
                               unavailable=True)
        config = {"INFERENCE_PRECISION_HINT": self.HINTS[self.precision]}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        self.core, self.ov_device, self.ov_config = core, device, config
        self.ov_path = self.onnx_for_precision()
        self.model = self.read_model(core, self.ov_path)
        first_dim = self.model.input(0).get_partial_shape()[0]
        self.batch_size = first_dim.get_length() if first_dim.is_static else None
        self.requests = {}  # batch size -> infer request of the model compiled for it
        if self.batch_size:
            self.requests[self.batch_size] = self._compile(self.model)

    def new_core(self, ov):
        return ov.Core()

    def openvino_device(self, core) -> str:
        """OpenVINO's name of the device asked for, refused in one line where OpenVINO does not see it (it names a
        machine's only GPU "GPU")."""
        if self.device_kind == "cpu":
            return "CPU"
        seen = list(core.available_devices)
        names = [f"GPU.{self.device_index}"] + (["GPU"] if self.device_index == 0 else [])
        found = [name for name in names if name in seen]
        if not found:
            raise SettingError("device", f"{self.device}: OpenVINO sees no {names[0]} here (its devices: "
                                         f"{', '.join(seen)})", unavailable=True)
        return found[0]

    @staticmethod
    def read_model(core, path):
        """The model of ``path``; a file OpenVINO cannot read as one is refused in one line (OpenVINO raises
        RuntimeError subclasses of its own for it)."""
        try:
            return core.read_model(str(path))
        except RuntimeError as exc:
            raise UserError(f"{path}: openvino cannot read this model: {first_line(exc)}") from exc

    def _compile(self, model):
        """An infer request of ``model`` compiled for the device; a failure is OpenVINO's own, raised with it as
        the cause."""
        try:
            return self.core.compile_model(model, self.ov_device, self.ov_config).create_infer_request()
        except RuntimeError as exc:
            raise RuntimeError(f"{self.ov_path}: openvino could not compile this model for {self.ov_device}: "
                               f"{first_line(exc)}") from exc

    def _request_for(self, batch_size):
        """The request for this batch size. A model with a dynamic batch axis is compiled once per batch
        size it meets, with that size fixed: OpenVINO runs a dynamic axis on generic kernels, far slower
        (docs/measurements-history.md)."""
        if batch_size not in self.requests:
            model = self.model.clone()
            model.reshape([batch_size] + list(self.input_shape))
            self.requests[batch_size] = self._compile(model)
        return self.requests[batch_size]

    @staticmethod
    def capabilities(core, device) -> list:
        return list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))

    @classmethod
    def device_has_bf16(cls, core, device) -> bool:
        return "BF16" in cls.capabilities(core, device)

    @classmethod
    def device_has_fp16(cls, core, device) -> bool:
        return "FP16" in cls.capabilities(core, device)

    def predict(self, batch):
        batch = check_batch(batch, self.input_shape)
        request = self._request_for(len(batch))
        request.infer({0: batch})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


class OpenVinoDepthwiseBackend(OpenVinoBackend):
    """OpenVINO int8 with ConvMixer's depthwise half-blocks on our own operation (runtimes.depthwise_op): the
    channels-last model built from the .onnx, its matrix products quantized by NNCF, cached beside the model as
    openvino's int8 model is. The operation is built with the machine's C++ compiler on first use (into
    convmixer_native/ beside the model). Its fp32 reference for the fidelity gate is the openvino backend."""
    name = "openvino-dwop"
    supported_precisions = ("int8",)
    supported_devices = ("cpu",)
    compute = "block"  # "copy" in runtime_compare: the model's cost with the half-blocks free

    @property
    def runtime(self) -> str:
        return "openvino"

    def _load(self):
        from convmixer_suite.precision import cpu_info
        from convmixer_suite.runtimes.depthwise_op import DepthwiseOp, this_kernel_isa
        isa = this_kernel_isa()
        if isa is None:
            raise SettingError("backend", f"{self.name}: the depthwise operation needs a CPU with AVX2 and FMA",
                               unavailable=True)
        self.depthwise = DepthwiseOp(isa, self.compute, self.model_path.parent / "convmixer_native")
        if cpu_info.this_int8_class() == "avx2":
            LOG.warning(f"{self.name} on CPU class avx2 (no VNNI): OpenVINO's int8 matrix products are slow there; "
                        f"slower than --backend openvino (docs/depthwise-op.md)")
        super()._load()
        self.version = f"{self.version}, own depthwise op ({isa})"

    def new_core(self, ov):
        return self.depthwise.core()

    def int8_options(self) -> dict:
        return {"depthwise_op": self.depthwise}
