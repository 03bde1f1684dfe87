"""Triton's own client against a peer, run in a subprocess by the interop tests (tritonclient's generated
protobuf modules define the same ``inference.*`` symbols as ours, so the two never share a process).

    python tritonclient_probe.py ADDRESS FOLDER MODEL [MODEL...]

Reads FOLDER/x.npy (FP32 [N, ...]). For each MODEL writes FOLDER/<model>.npy (the logits of one request
carrying every row) and FOLDER/<model>.rows.npy (each row sent as its own request, all in flight at once),
and prints JSON: server health, and per model its readiness, ModelMetadata and, where the server offers
it, ModelStatistics before and after the requests.
"""

import json
import sys
import threading

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

TIMEOUT_S = 60


def tensor(x):
    t = grpcclient.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(np.ascontiguousarray(x))
    return t


def infer(client, model, x):
    outputs = [grpcclient.InferRequestedOutput("logits")]
    return client.infer(model, [tensor(x)], outputs=outputs, client_timeout=TIMEOUT_S).as_numpy("logits")


def infer_rows_at_once(client, model, x):
    results = [None] * len(x)
    finished = threading.Semaphore(0)

    def callback(i):
        def done(result, error):
            results[i] = error if error is not None else result.as_numpy("logits")
            finished.release()

        return done

    for i in range(len(x)):
        client.async_infer(model, [tensor(x[i : i + 1])], callback(i), client_timeout=TIMEOUT_S)
    for _ in range(len(x)):
        if not finished.acquire(timeout=TIMEOUT_S):
            raise TimeoutError(f"{model}: no answer to every concurrent request in {TIMEOUT_S}s")
    for r in results:
        if isinstance(r, Exception):
            raise r
    return np.concatenate(results)


def statistics(client, model):
    try:
        return client.get_inference_statistics(model, as_json=True)
    except InferenceServerException as e:  # MLServer has no statistics extension
        return {"error": e.message()}


def main(address, folder, models):
    x = np.load(f"{folder}/x.npy")
    client = grpcclient.InferenceServerClient(address)
    out = {"live": client.is_server_live(), "ready": client.is_server_ready(), "models": {}}
    for model in models:
        entry = {
            "ready": client.is_model_ready(model),
            "metadata": client.get_model_metadata(model, as_json=True),
            "statistics_before": statistics(client, model),
        }
        np.save(f"{folder}/{model}.npy", infer(client, model, x))
        np.save(f"{folder}/{model}.rows.npy", infer_rows_at_once(client, model, x))
        entry["statistics_after"] = statistics(client, model)
        out["models"][model] = entry
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
