"""The handler types behind one interface (``base``), found by name (``registry``), built from config (``build``)."""
