"""Serving our VLAs on the real NDIF server software (``ndif`` 0.1.2): CPU model actor, version-skew shim and a local loopback stack."""
