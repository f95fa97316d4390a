// A closed-loop gRPC load generator that is not Python: `inflight` calls kept in flight,
// spread over `channels` channels, to the daemon's Unix socket, for `seconds`; prints one
// JSON line (calls, p50/p99 latency in µs, calls per second). Calls: health (the floor),
// get (GetToken by name), sign (Sign, AWS SigV4 with a stored token).
//   node loadgen.js SOCKET PROTO_DIR CALL INFLIGHT CHANNELS SECONDS [TOKEN_NAME]
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [socket, protoDir, call, inflight, channels, seconds, tokenName = "bench"] = process.argv.slice(2);
const opts = { keepCase: true, longs: String, enums: Number, defaults: false, includeDirs: [protoDir, __dirname] };
const pkg = grpc.loadPackageDefinition(loader.loadSync(
  [path.join(protoDir, "qpubroker/v1/tokens.proto"), path.join(protoDir, "qpubroker/v1/requests.proto"),
   path.join(__dirname, "health.proto")], opts));

function stubFor(i) {
  // A distinct channel per stub: grpc-js would otherwise share one subchannel between them.
  const options = { "grpc.use_local_subchannel_pool": 1, "grpc-node.max_session_memory": 64, "channel_id": i };
  const creds = grpc.credentials.createInsecure();
  const target = `unix:${socket}`;
  if (call === "health") return [new pkg.grpc.health.v1.Health(target, creds, options), "Check", {}];
  if (call === "get") {
    return [new pkg.qpubroker.v1.TokenService(target, creds, options), "GetToken",
            { token: { name: tokenName, kind: 1 } }];
  }
  if (call === "sign") {
    // The same request as bench/clients.py's Python Sign.
    return [new pkg.qpubroker.v1.RequestService(target, creds, options), "Sign", {
      method: "POST", url: "https://braket.us-east-1.amazonaws.com/quantum-task", body: Buffer.from('{"shots": 100}'),
      headers: [{ name: "Content-Type", value: "application/json" }], tokens: { aws: { kind: 1, name: tokenName } },
    }];
  }
  throw new Error(`unknown call ${call}: health, get or sign`);
}

const stubs = Array.from({ length: Number(channels) }, (_, i) => stubFor(i));
const latencies = [];
let errors = 0, firstError = "", stopAt = 0, measuring = false;

function one(k) {
  const [stub, method, request] = stubs[k % stubs.length];
  const t0 = process.hrtime.bigint();
  stub[method](request, (err) => {
    const t1 = process.hrtime.bigint();
    if (err) { errors++; firstError = firstError || String(err.details || err); }
    else if (measuring) latencies.push(Number(t1 - t0) / 1000);
    if (process.hrtime.bigint() < stopAt) one(k);
    else if (--running === 0) done();
  });
}

let running = 0;
function run(durationS) {
  stopAt = process.hrtime.bigint() + BigInt(Math.round(durationS * 1e9));
  running = Number(inflight);
  for (let k = 0; k < Number(inflight); k++) one(k);
}

let started = 0n;
function done() {
  if (!measuring) {  // the warm-up is over: measure
    measuring = true;
    started = process.hrtime.bigint();
    run(Number(seconds));
    return;
  }
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  latencies.sort((a, b) => a - b);
  const pick = (q) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * q))] : 0;
  console.log(JSON.stringify({ calls: latencies.length, errors, first_error: firstError, p50_us: pick(0.5),
                               p99_us: pick(0.99), rps: latencies.length / elapsed }));
  process.exit(0);
}

run(Math.min(1.0, Number(seconds) / 5));  // warm-up: connections, caches, JIT
