"""Pure NumPy/SciPy kernels: one frame in, arrays out. No Dask, no I/O."""
