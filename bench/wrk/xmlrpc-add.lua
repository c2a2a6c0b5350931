-- The methodCall xmlrpc.client sends for add(2, 3), on a keep-alive connection.
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/xml"
wrk.body = "<?xml version='1.0'?>\n<methodCall>\n<methodName>add</methodName>\n<params>\n" ..
   "<param>\n<value><int>2</int></value>\n</param>\n<param>\n<value><int>3</int></value>\n" ..
   "</param>\n</params>\n</methodCall>\n"
