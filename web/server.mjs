// The static server web/e2e.mjs and web/scale.mjs run on 127.0.0.1: web/dist at /, a bundle
// directory at /bundle/. `served.bytes` counts the bundle's bytes sent.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };

export function serve(dist, bundleDir, served = { bytes: 0 }) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const [root, rel] = url.pathname.startsWith("/bundle/")
      ? [bundleDir, url.pathname.slice("/bundle/".length)]
      : [dist, url.pathname === "/" ? "index.html" : url.pathname.slice(1)];
    const file = path.resolve(root, decodeURIComponent(rel));
    if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end("not found");
      return;
    }
    const size = fs.statSync(file).size;
    if (root === bundleDir) served.bytes += size;
    res.writeHead(200, { "content-length": size, "content-type": types[path.extname(file)] ?? "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}
