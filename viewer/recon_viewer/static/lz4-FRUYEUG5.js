throw new Error("numcodecs/lz4 is not bundled: recon view reads NIfTI, not Zarr");
