// Preloaded into the Portkey gateway (node --import) by bench/run.py.
//
// build/start-server.js takes --port but no host, and @hono/node-server then
// calls server.listen(port, undefined), which binds every interface. The bench
// only ever talks to it over loopback, so a listen() given a port and no host
// is bound to 127.0.0.1 instead.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, host, ...rest) {
  if (typeof port === "number" && host === undefined) host = "127.0.0.1";
  return listen.call(this, port, host, ...rest);
};
