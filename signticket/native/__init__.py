"""Native CPU kernels behind JAX primitives (oneDNN convolutions); see :mod:`.conv`."""
