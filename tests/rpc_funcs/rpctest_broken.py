"""A module that cannot be imported: the XML-RPC handler must turn this into an option error."""

raise RuntimeError("this module refuses to load")
