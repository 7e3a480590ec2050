"""A tiny "training" loop: fits y = 3x + 1 by gradient descent and prints one line per epoch."""

import random
import sys
import time

random.seed(0)
data = [(x, 3 * x + 1 + random.gauss(0, 0.1)) for x in [i / 100 for i in range(100)]]
w, b, lr = 0.0, 0.0, 0.5
print(f"Python {sys.version_info.major}.{sys.version_info.minor} at {sys.executable}")
for epoch in range(10):
    gw = sum(2 * (w * x + b - y) * x for x, y in data) / len(data)
    gb = sum(2 * (w * x + b - y) for x, y in data) / len(data)
    w, b = w - lr * gw, b - lr * gb
    loss = sum((w * x + b - y) ** 2 for x, y in data) / len(data)
    print(f"Epoch {epoch}: loss={loss:.4f} w={w:.3f} b={b:.3f}", flush=True)
    time.sleep(0.2)
