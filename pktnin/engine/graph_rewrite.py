"""Rewrites of an exported graph that change no value, only how fast the CPU engines run it.

tf2onnx writes each Keras Conv1D as Unsqueeze -> 2-D Conv -> Squeeze -> bias Add, and each MaxPooling1D as
Unsqueeze -> MaxPool -> Squeeze, so between two layers the tensor drops to 3-D and back. In float32 that stops
ONNX Runtime from fusing bias and ReLU into the convolution; in int8 it stops the int8 convolutions from chaining
in one layout, and layout transposes and float MaxPools between them took half of the int8 time (measured with
ONNX Runtime's profiler on the bundled models). simplify_conv1d folds the biases into the convolutions and drops
every Squeeze -> [Relu...] -> Unsqueeze pair on the same axes, so the convolution stack stays 4-D from its first
Unsqueeze to its pooling. Measured on the bundled nin1_port: float32 1.30x, int8 1.9x, of the graph before.
"""

from __future__ import annotations

import numpy as np

_SHAPE_FREE = ("Relu",)  # elementwise ops that work the same on the 3-D and the 4-D tensor


def fold_conv_bias(proto) -> int:
    """Move `Conv -> Squeeze -> Add(bias [1,C,1])` biases into the Conv (in place); returns how many.

    The Keras export adds each Conv1D bias after squeezing the 2-D convolution back to 1-D. Left there, every
    convolution output gets its own quantization step before the bias and ONNX Runtime cannot fuse the
    convolution, bias and ReLU into one int8 kernel.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {v.name for v in proto.graph.output}
    folded = 0
    removed = []
    for conv in proto.graph.node:
        if conv.op_type != "Conv" or len(conv.input) > 2 or conv.input[1] not in inits:
            continue
        after = consumers.get(conv.output[0], [])
        if len(after) != 1 or after[0].op_type != "Squeeze" or conv.output[0] in outputs:
            continue
        squeeze = after[0]
        after = consumers.get(squeeze.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add" or squeeze.output[0] in outputs:
            continue
        add = after[0]
        bias_name = add.input[1] if add.input[0] == squeeze.output[0] else add.input[0]
        if bias_name not in inits:
            continue
        bias = numpy_helper.to_array(inits[bias_name])
        channels = inits[conv.input[1]].dims[0]
        if bias.size != channels or bias.ndim != 3 or bias.shape[1] != channels:
            continue
        name = conv.name + "/folded_bias"
        proto.graph.initializer.append(numpy_helper.from_array(bias.reshape(channels).astype(np.float32), name))
        conv.input.append(name)
        # The Squeeze now produces what the Add produced.
        for node in consumers.get(add.output[0], []):
            node.input[:] = [squeeze.output[0] if i == add.output[0] else i for i in node.input]
        for value in proto.graph.output:
            if value.name == add.output[0]:
                squeeze.output[0] = add.output[0]
                for node in consumers.get(add.output[0], []):
                    node.input[:] = [add.output[0] if i == squeeze.output[0] else i for i in node.input]
        removed.append(add)
        folded += 1
    for node in removed:
        proto.graph.node.remove(node)
    return folded


def _axes(node, inits: dict) -> list[int] | None:
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "axes":
            return list(attr.ints)
    if len(node.input) > 1 and node.input[1] in inits:
        return [int(a) for a in numpy_helper.to_array(inits[node.input[1]]).reshape(-1)]
    return None


def drop_squeeze_pairs(proto) -> int:
    """Remove each Squeeze -> [Relu...] -> Unsqueeze on the same axes whose intermediate values have no other
    reader (in place); returns how many pairs went."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {v.name for v in graph.output}
    dropped = 0
    while True:
        producer = {out: node for node in graph.node for out in node.output}
        readers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        pair = None
        for unsqueeze in graph.node:
            if unsqueeze.op_type != "Unsqueeze":
                continue
            chain = []  # the shape-free ops between, last first
            node = producer.get(unsqueeze.input[0])
            while node is not None and node.op_type in _SHAPE_FREE and len(readers.get(node.output[0], [])) == 1:
                chain.append(node)
                node = producer.get(node.input[0])
            if node is None or node.op_type != "Squeeze" or node.output[0] in outputs:
                continue
            if len(readers.get(node.output[0], [])) != 1 or _axes(node, inits) != _axes(unsqueeze, inits):
                continue
            pair = (node, chain, unsqueeze)
            break
        if pair is None:
            return dropped
        squeeze, chain, unsqueeze = pair
        if chain:
            chain[-1].input[0] = squeeze.input[0]
            result = chain[0].output[0]
        else:
            result = squeeze.input[0]
        for node in readers.get(unsqueeze.output[0], []):
            node.input[:] = [result if name == unsqueeze.output[0] else name for name in node.input]
        if unsqueeze.output[0] in outputs:  # never the case for a model's probabilities, kept exact anyway
            return dropped
        graph.node.remove(unsqueeze)
        graph.node.remove(squeeze)
        dropped += 1


def simplify_conv1d(proto) -> tuple[int, int]:
    """fold_conv_bias, then drop_squeeze_pairs (in place); returns (biases folded, pairs dropped). Stale shape
    annotations of the values in between and the constants nothing reads any more are removed."""
    folded = fold_conv_bias(proto)
    dropped = drop_squeeze_pairs(proto)
    if folded or dropped:
        del proto.graph.value_info[:]
        read = {name for node in proto.graph.node for name in node.input}
        unused = [t for t in proto.graph.initializer if t.name not in read]  # the removed nodes' axes and biases
        for tensor in unused:
            proto.graph.initializer.remove(tensor)
    return folded, dropped
