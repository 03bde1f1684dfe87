"""An image's decoding is bounded by the model it is for: a 16-bit 5000x5000 PNG (49 KB over the wire)
for a 32x32 model is refused from its header, 400 naming its size and the limit. In-process, over the
binary tensor extension (BYTES elements are not JSON text)."""

from __future__ import annotations

import io
import json

from PIL import Image

from protos.wire import serialize_bytes
from tests.modelrepo.test_images import png_header_only
from tests.service.inprocess import linear_model, run, serving

INFER = "/v2/models/lenet5/infer"


def image_request(image: bytes) -> tuple[bytes, dict]:
    blob = serialize_bytes([image])
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": len(blob)},
    }
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def test_an_image_far_larger_than_the_model_input_is_refused_from_its_header(tmp_path):
    repo = tmp_path / "repo"
    linear_model(repo)
    small = io.BytesIO()
    Image.new("L", (100, 100)).save(small, format="PNG")

    async def main():
        async with serving(repo) as s:
            answers = []
            for image in (png_header_only(5000, 5000, bits=16), small.getvalue()):
                body, headers = image_request(image)
                answers.append(await s.http.post(INFER, content=body, headers=headers))
            return answers

    refused, served = run(main())
    assert served.status_code == 200, served.text
    assert refused.status_code == 400
    assert (
        "input 'image' element 0: PNG image of 5000x5000 pixels exceeds the limit of 16384 pixels "
        "decoded for this model's 32x32 input"
    ) in refused.json()["error"]
