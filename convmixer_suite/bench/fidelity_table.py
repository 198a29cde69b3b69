"""The benchmark's fidelity figures: how far each configuration's logits are from the reference's on the same
images (convmixer_suite.precision.fidelity.compare_logits, the gate's own measure), and which configurations stay within
the user's limit (``--max-logit-error``); one beyond it is marked so and never called fastest."""
import numpy as np

from convmixer_suite.precision.fidelity import logit_figures


def fidelity(backends: dict, pictures: np.ndarray, chunk: int, reference: str, limit: float) -> dict:
    """Per configuration: top-1 agreement with ``reference``, max |diff|, max |diff| / max |logit| and whether
    that is within ``limit``."""
    outputs = {name: np.concatenate([b.predict(pictures[i:i + chunk]) for i in range(0, len(pictures), chunk)])
               for name, b in backends.items()}
    figures = {name: logit_figures(logits, outputs[reference]) for name, logits in outputs.items()}
    return {name: {**f, "within_limit": f["max_rel_diff"] <= limit} for name, f in figures.items()}


def fastest_within_limit(rows, fid, batch_size=1):
    """The fastest timing row at ``batch_size`` whose configuration is within the fidelity limit, or None."""
    ok = [r for r in rows if r["batch_size"] == batch_size and fid.get(r["config"], {}).get("within_limit")]
    return max(ok, key=lambda r: r["throughput_images_per_s"]) if ok else None
