"""Top-5 classes of an image with an ONNX file from `bit export`: python onnxruntime_example.py MODEL.onnx IMAGE"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map  # written by `bit export`
size, resize = int(meta["input_size"]), int(meta["resize"])
image = Image.open(sys.argv[2]).convert("RGB")
if meta["transforms"] == "recipe":  # shorter side to `resize`, then a centre crop
    w, h = image.size
    image = image.resize((resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize), Image.BILINEAR)
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    image = image.crop((left, top, left + size, top + size))
else:  # BiT-HyperRule: squash to size x size
    image = image.resize((size, size), Image.BILINEAR)
x = (np.asarray(image, np.float32) / 255 - json.loads(meta["mean"])) / json.loads(meta["std"])
logits = session.run(None, {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
probs = np.exp(logits - logits.max())
probs /= probs.sum()
classes = json.loads(meta["classes"])
for i in probs.argsort()[::-1][:5]:
    print(f"{classes[i]}: {probs[i]:.4f}")
