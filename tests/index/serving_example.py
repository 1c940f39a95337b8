"""Serve a recsampled artifact with only faiss + tensorflow (the README's example, verbatim).

Usage: ``python serving_example.py ARTIFACT_DIR K '[user ids as JSON]'`` prints JSON.
``tests/index/test_serving_example.py`` runs this file and compares it with the CLI's
``Retriever.recommend``; the README reproduces the function below.
"""

import json
import sys

import faiss
import numpy as np
import tensorflow as tf


def recommend(artifact, user_ids, k=10):
    """Top-k unseen (item id, score) per known user of an artifact with one index.faiss."""
    manifest = json.load(open(f"{artifact}/manifest.json"))
    model = tf.saved_model.load(f"{artifact}/query_model/1")  # TF Serving's layout
    ids = tf.constant(user_ids, manifest["query_model"]["user_id_dtype"])  # int64 or string
    out = {name: t.numpy() for name, t in model.signatures["serving_default"](user_ids=ids).items()}
    if manifest["metric"] == "cosine":
        faiss.normalize_L2(out["embeddings"])
    item_ids, seen = np.load(f"{artifact}/item_ids.npy"), dict(np.load(f"{artifact}/seen.npz"))
    index, ptr = faiss.read_index(f"{artifact}/index.faiss"), seen["indptr"]  # tuned nprobe/ef
    scores, rows = index.search(out["embeddings"], k + int(np.diff(ptr).max()))  # room for seen

    def answer(user_id, ok, u, s, r):  # the item row -1 means "no item found"
        own = {-1, *seen["indices"][ptr[u] : ptr[u + 1]].tolist()}
        items = [(item_ids[j].item(), float(v)) for v, j in zip(s, r, strict=True) if j not in own]
        return {"user_id": user_id, "known": bool(ok), "items": items[:k] if ok else []}

    columns = (user_ids, out["known"], out["user_indices"], scores, rows)
    return [answer(*row) for row in zip(*columns, strict=True)]


if __name__ == "__main__":
    print(json.dumps(recommend(sys.argv[1], json.loads(sys.argv[3]), int(sys.argv[2]))))
