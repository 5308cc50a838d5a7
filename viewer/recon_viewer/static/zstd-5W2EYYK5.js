throw new Error("numcodecs/zstd is not bundled: recon view reads NIfTI, not Zarr");
