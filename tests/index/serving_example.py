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
    dtype = manifest["query_model"]["user_id_dtype"]  # "int64" or "string"
    out = model.signatures["serving_default"](user_ids=tf.constant(user_ids, dtype))
    queries, known, users = (out[key].numpy() for key in ("embeddings", "known", "user_indices"))
    if manifest["metric"] == "cosine":
        faiss.normalize_L2(queries)
    index = faiss.read_index(f"{artifact}/index.faiss")  # tuned nprobe/efSearch included
    item_ids, seen = np.load(f"{artifact}/item_ids.npy"), np.load(f"{artifact}/seen.npz")
    indptr, seen_rows = seen["indptr"], seen["indices"]
    scores, rows = index.search(queries, k + int(np.diff(indptr).max()))  # room for seen items
    result = []
    for user_id, ok, user, s, r in zip(user_ids, known, users, scores, rows, strict=True):
        own = {-1, *seen_rows[indptr[user] : indptr[user + 1]].tolist()}  # -1: no item found
        top = [(item_ids[j].item(), float(v)) for v, j in zip(s, r, strict=True) if j not in own]
        result.append({"user_id": user_id, "known": bool(ok), "items": top[:k] if ok else []})
    return result


if __name__ == "__main__":
    print(json.dumps(recommend(sys.argv[1], json.loads(sys.argv[3]), int(sys.argv[2]))))
