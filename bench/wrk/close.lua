-- Every request asks the server to close the connection afterwards (a new TCP connection each).
wrk.headers["Connection"] = "close"
