"""On-disk formats: read and write bytes, know nothing about kernels."""
