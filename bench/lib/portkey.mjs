// Starts the Portkey gateway (node_modules/@portkey-ai/gateway) bound to
// 127.0.0.1 only: its start script listens on every interface, so the
// listen call is narrowed before the script is loaded.
//   node bench/lib/portkey.mjs PORT
import net from "node:net";
import path from "node:path";
import { pathToFileURL } from "node:url";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: portkey.mjs PORT");
  process.exit(2);
}
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && args[1] === undefined) args[1] = "127.0.0.1";
  return listen.apply(this, args);
};
process.argv = [process.argv[0], "start-server.js", `--port=${port}`, "--headless"];
const here = path.dirname(new URL(import.meta.url).pathname);
await import(pathToFileURL(path.join(here, "..", "node_modules", "@portkey-ai", "gateway",
                                      "build", "start-server.js")).href);
