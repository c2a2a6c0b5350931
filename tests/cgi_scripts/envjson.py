"""The environment, arguments, working directory and a digest of stdin, as JSON."""

import hashlib
import json
import os
import sys

data = sys.stdin.buffer.read()
sys.stdout.write("Content-Type: application/json\r\n\r\n")
sys.stdout.write(
    json.dumps(
        {
            "env": {key: os.environ[key] for key in os.environ},
            "argv": sys.argv[1:],
            "cwd": os.getcwd(),
            "stdin_length": len(data),
            "stdin_sha256": hashlib.sha256(data).hexdigest(),
        }
    )
)
