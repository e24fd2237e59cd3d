"""Write tests/data/tf_reference.npz: TensorFlow's outputs for OpenVLA's LIBERO image steps.

Needs TensorFlow, which the project does not install: run it in a separate venv
(``pip install tensorflow-cpu numpy``), then ``python scripts/tf_reference.py``.
tests/test_openvla_tfimage.py checks `nnsight_vla_openvla.tfimage` against the file.
"""

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tf_reference.npz"


def synthetic_frame(seed: int, height: int, width: int) -> np.ndarray:
    """A deterministic RGB frame with gradients, hard edges and noise (JPEG and resize both act)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([255 * x, 255 * y, 128 + 100 * np.sin(12 * x * y)], axis=-1)
    base[(x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.04] = [250, 30, 20]
    base[int(0.7 * height):, : int(0.3 * width)] = [20, 20, 240]
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def main() -> None:
    import tensorflow as tf

    def resize(image, size):
        return tf.image.resize(image, size, method="lanczos3", antialias=True)

    def to_uint8(image):
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()

    frame = synthetic_frame(0, 128, 128)  # 128 -> 112 has LIBERO's 256 -> 224 ratio
    small = synthetic_frame(1, 48, 64)
    jpeg = tf.io.decode_image(tf.image.encode_jpeg(frame), expand_animations=False, dtype=tf.uint8)
    pipeline = to_uint8(resize(jpeg, (112, 112)))
    # OpenVLA's centre crop: [0, 1] floats, crop_and_resize of the central 0.9 area, back to uint8.
    side = tf.reshape(tf.clip_by_value(tf.sqrt(0.9), 0, 1), (1,))
    box = tf.stack([(1 - side) / 2, (1 - side) / 2, (1 - side) / 2 + side, (1 - side) / 2 + side], axis=1)
    floats = tf.image.convert_image_dtype(tf.convert_to_tensor(pipeline), tf.float32)[None]
    crop = tf.clip_by_value(tf.image.crop_and_resize(floats, box, tf.range(1), (112, 112))[0], 0, 1)
    np.savez_compressed(
        OUT,
        crop_112=tf.image.convert_image_dtype(crop, tf.uint8, saturate=True).numpy(),
        jpeg_128=jpeg.numpy(),
        pipeline_128=pipeline,
        resize_float_48x64=resize(small, (40, 56)).numpy(),
        upsize_float_48x64=resize(small, (61, 77)).numpy(),
        tensorflow=np.array(tf.__version__),
    )
    print(f"wrote {OUT} with TensorFlow {tf.__version__}")


if __name__ == "__main__":
    main()
