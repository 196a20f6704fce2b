import platform

import numpy as np

print("Hello from BioCage!")
print(f"Python {platform.python_version()}, numpy {np.__version__}, mean of 1..10 = {np.arange(1, 11).mean()}")
