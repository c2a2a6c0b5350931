"""A header block that never ends: 100 KiB of fields."""

import sys

for n in range(2000):
    sys.stdout.write(f"X-Filler-{n}: {'y' * 40}\n")
sys.stdout.write("Content-Type: text/plain\n\nlate\n")
