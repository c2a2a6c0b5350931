"""HTTP/1.1 without I/O: request heads (``head``) and bodies (``body``) parsed, responses framed
(``response``), the grammar rules, the messages, the errors; nothing else of porch imported."""
