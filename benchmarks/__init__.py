"""Side-by-side speed measurements, run as `repirl bench NAME [--out FILE.json]`."""
