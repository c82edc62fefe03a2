"""Custom Keras layers of the pktnin models, registered so that `.keras` files load in Keras's safe mode.

Python lambdas (keras.layers.Lambda) would be refused by safe-mode loading, so slicing and fusion are
small layers with a config instead. Both export to ONNX with tf2onnx (StridedSlice/ExpandDims, Mul/Add).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="pktnin")
class ByteSlice(keras.layers.Layer):
    """Bytes `start:stop` of the normalized row [batch, 1500] as a one-channel sequence [batch, stop-start, 1]."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        start, stop = int(start), int(stop)
        if not 0 <= start < stop:
            raise ValueError(f"ByteSlice needs 0 <= start < stop, got start={start}, stop={stop}")
        self.start = start
        self.stop = stop

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"ByteSlice expects rows of shape [batch, bytes], got {tuple(input_shape)}")
        width = input_shape[-1]
        if width is not None and width < self.stop:
            raise ValueError(f"ByteSlice({self.start}, {self.stop}) does not fit rows of {width} bytes")
        super().build(input_shape)

    def call(self, rows):
        return keras.ops.expand_dims(rows[:, self.start : self.stop], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.stop - self.start, 1)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="pktnin")
class AlphaFusion(keras.layers.Layer):
    """The paper's Eq. 3: y = alpha * y1 + (1 - alpha) * y2 for two probability vectors [batch, C].

    alpha lives in the layer config (not a weight), so a fused model has exactly the parameters of its two
    branches; a new alpha means a new AlphaFusion layer (see models.build_parallel).
    """

    def __init__(self, alpha: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def build(self, input_shape):
        if len(input_shape) != 2 or tuple(input_shape[0])[1:] != tuple(input_shape[1])[1:]:
            raise ValueError(f"AlphaFusion expects two inputs of the same shape, got {input_shape}")
        super().build(input_shape)

    def call(self, inputs):
        y1, y2 = inputs
        return self.alpha * y1 + (1.0 - self.alpha) * y2

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}
