// Preloaded into the Portkey gateway (node --import) by bench/run.py.
//
// @portkey-ai/gateway 1.15.2 on Node answers every *streamed* chat completion
// with {"status":"failure","message":"Something went wrong"} and logs
// "TypeError: immutable": @hono/node-server's Response keeps the upstream
// fetch() response's immutable Headers, then ResponseService.updateHeaders()
// appends x-portkey-* headers to them (Portkey-AI/gateway issues #1389, #1550;
// open PR #1390 makes those writes best-effort). This shim does the same from
// outside: a header write refused only because the Headers are immutable is
// skipped, so the stream is proxied without the x-portkey-* response headers.
for (const name of ["append", "set", "delete"]) {
  const original = Headers.prototype[name];
  Headers.prototype[name] = function (...args) {
    try {
      return original.apply(this, args);
    } catch (err) {
      if (err instanceof TypeError && err.message === "immutable") return undefined;
      throw err;
    }
  };
}
