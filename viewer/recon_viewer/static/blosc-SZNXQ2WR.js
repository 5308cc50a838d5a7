throw new Error("numcodecs/blosc is not bundled: recon view reads NIfTI, not Zarr");
