"""How fast the streaming ImageNet input pipeline runs on this machine, beside the engine.

``python tests/_stream_rate.py [--images N] [--engine-batch B]`` prints JSON:

* ``pipeline``: images/s of the host pipeline (TFDS reader -> JPEG decode of the
  RandomResizedCrop window -> resize 224 -> flip -> batch) with tf.data's autotuned
  parallelism, wall clock, and per CPU-second (process CPU time, so the rate of one core
  whatever else the machine runs);
* ``pipeline_1thread``: the same with one tf.data thread (a per-core rate measured directly);
* ``fit_stream``: end to end through ``StreamingDataset.train_epoch`` (pipeline + transfer to
  the devices) feeding the ResNet-50 engine's train step, images/s;
* ``engine``: the ResNet-50 train step alone on a resident batch, images/s.

TFDS's mock builder serves the examples, but with ImageNet-shaped JPEGs (500x375, quality 90,
~100 KB, about ImageNet's average) instead of its default tiny random ones, so decode costs
what it costs on ImageNet.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        # Smooth content + noise: compresses like a photograph, not like pure noise.
        y, x = np.mgrid[0:375, 0:500]
        base = np.stack([np.sin(x / rng.uniform(10, 60)) * 80 + 120,
                         np.cos(y / rng.uniform(10, 60)) * 80 + 120,
                         (x + y) % 255], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(img, quality=90).numpy())
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--engine-batch", type=int, default=16)
    parser.add_argument("--engine-steps", type=int, default=3)
    args = parser.parse_args(argv)

    from signticket import cpu_tuning

    cpu_tuning.apply()
    from signticket.data import stream, tfds_source

    tfds = tfds_source.import_tfds()
    import tensorflow as tf

    pool = _jpegs(64)
    n = args.images

    def as_dataset_fn(builder, split, decoders=None, read_config=None, shuffle_files=False,
                      **_):
        labels = tf.data.Dataset.range(n)
        return labels.map(lambda i: {"image": tf.gather(tf.constant(pool), i % len(pool)),
                                     "label": i % 1000,
                                     "file_name": tf.constant("x.JPEG")})

    result: dict = {"jpeg_kb_mean": sum(map(len, pool)) / len(pool) / 1024}
    with tfds.testing.mock_data(num_examples=n, as_dataset_fn=as_dataset_fn):
        stream.open_builder = lambda spec, d: tfds.builder(spec.tfds_name, data_dir=str(d))
        ds = stream.load_stream("imagenet2012", data_dir="/tmp/_stream_rate", train_subset=n,
                                test_subset=256)

        def host_rate(threads: int | None) -> dict:
            pipe = ds._train_dataset(seed=0, local_batch=64, process_count=1, process_index=0)
            if threads:
                opts = tf.data.Options()
                opts.threading.private_threadpool_size = threads
                opts.threading.max_intra_op_parallelism = 1
                opts.autotune.enabled = False
                pipe = pipe.with_options(opts)
            it = iter(tfds.as_numpy(pipe))
            next(it)  # start-up (thread pools, first buffers) not timed
            t, c, k = time.perf_counter(), _cpu_s(), 0
            for batch in it:
                k += len(batch["label"])
            wall, cpu = time.perf_counter() - t, _cpu_s() - c
            return {"images": k, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                    "img_per_s": round(k / wall, 1), "img_per_cpu_s": round(k / cpu, 1)}

        result["pipeline"] = host_rate(None)
        result["pipeline_1thread"] = host_rate(1)

        import jax
        import optax

        from signticket import models
        from signticket.sharding import make_mesh
        from signticket.train import Engine

        mesh = make_mesh()
        b = args.engine_batch
        engine = Engine(models.get("resnet50", num_classes=1000),
                        optax.sgd(0.1, momentum=0.9), ds.preprocess, mesh)
        state = engine.init_state(jax.random.PRNGKey(0), ds.sample_images())
        batches = ds.train_epoch(1, b, 0, mesh)
        state, m = engine.train_step(state, next(batches))  # compile
        jax.block_until_ready(m)
        t, k = time.perf_counter(), 0
        for _ in range(args.engine_steps):
            state, m = engine.train_step(state, next(batches))
            k += b
        jax.block_until_ready(m)
        result["fit_stream"] = {"batch": b, "img_per_s": round(k / (time.perf_counter() - t), 2)}
        batch = next(batches)
        t = time.perf_counter()
        for _ in range(args.engine_steps):
            state, m = engine.train_step(state, batch)
        jax.block_until_ready(m)
        result["engine"] = {"batch": b, "img_per_s": round(
            args.engine_steps * b / (time.perf_counter() - t), 2)}
    result["cpu_count"] = __import__("os").cpu_count()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
