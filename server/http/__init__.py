"""HTTP/1.1 without I/O: request heads and bodies parsed, response heads framed, the grammar rules, the errors."""
