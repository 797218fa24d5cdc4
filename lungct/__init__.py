"""lungct: finding, validating, loading, caching and splitting chest-CT scans; synthetic phantoms."""
