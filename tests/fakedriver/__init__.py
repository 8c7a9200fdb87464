"""A fake libaipudrv.so (the Zhouyi NPU user-mode driver) and fake graphs for tests."""
