"""Every way images come in, by one source spec: named sets, IDX, npy/npz, Parquet, image folders."""
