"""What a Ray decode task runs (``ray_engine``'s pipeline, step 2), in a module of its own: a task's worker
process imports this module to run ``decode_block``, and so only what decoding needs (the transform, Pillow,
NumPy), not the engine with its backends and records. Every worker process pays its imports before its first
block, on the start-up path of the run's first batch."""
import json
import time

import numpy as np

from convmixer_suite.guide.transform import EvalTransform, load_batch


def decode_block(block: dict, batch_size: int, transform: dict) -> dict:
    """Ray Data task: a block of listed batches (each row a JSON list of [index, image paths]) -> one row per
    batch with its whole padded array (the local engine's ``load_batch``), its bad images as JSON
    {row: message}, its number of images and the seconds it took."""
    tf = EvalTransform.from_dict(transform)
    ks, counts, images, bad, seconds = [], [], [], [], []
    for listing in block["batches"]:
        for k, paths in json.loads(str(listing)):
            started = time.perf_counter()
            batch, bad_rows = load_batch(paths, tf, rows=batch_size, skip_bad=True)
            ks.append(k)
            counts.append(len(paths))
            images.append(batch)
            bad.append(json.dumps({row: message for row, _, message in bad_rows}))
            seconds.append(time.perf_counter() - started)
    return {"k": np.array(ks), "n": np.array(counts), "image": np.stack(images), "bad": np.array(bad, dtype=object),
            "decode_s": np.array(seconds)}
