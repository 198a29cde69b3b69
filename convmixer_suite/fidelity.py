"""How far each configuration's logits are from the reference's, and which configurations stay within the
user's limit (``--max-logit-error``: max |logit diff| / max |logit|); one beyond it is never called fastest."""
import numpy as np


def fidelity(backends: dict, pictures: np.ndarray, chunk: int, reference: str, limit: float) -> dict:
    """Per configuration: top-1 agreement with ``reference``, max |diff|, max |diff| / max |logit| and whether
    that is within ``limit``."""
    outputs = {name: np.concatenate([b.predict(pictures[i:i + chunk]) for i in range(0, len(pictures), chunk)])
               for name, b in backends.items()}
    ref = outputs[reference]
    max_logit = float(np.abs(ref).max())
    result = {}
    for name, logits in outputs.items():
        diff = float(np.abs(logits - ref).max())
        rel = diff / max_logit if max_logit else float("inf")
        result[name] = {"top1_agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
                        "max_abs_diff": diff, "max_abs_logit": max_logit, "max_rel_diff": rel,
                        "within_limit": rel <= limit, "num_images": int(len(pictures))}
    return result


def fastest_within_limit(rows, fid, batch_size=1):
    """The fastest timing row at ``batch_size`` whose configuration is within the fidelity limit, or None."""
    ok = [r for r in rows if r["batch_size"] == batch_size and fid.get(r["config"], {}).get("within_limit")]
    return max(ok, key=lambda r: r["throughput_images_per_s"]) if ok else None
