// leak.js - a Node.js workload that leaks Buffers from one named JS
// function, for the JIT frame test (tests/jit.rs). Run with
// `node --perf-basic-prof leak.js`, so V8 writes /tmp/perf-PID.map.
//
// Protocol: stdout "ready <pid>"; on the first stdin line, call
// leakyJsFunction LEAKS times and print "done"; exit when stdin closes.
//
// Each Buffer is 64 KiB: above Node's 4 KiB pool, so each one is its own
// ArrayBuffer backing store, allocated zero-filled through libc.
'use strict';

const LEAKS = 200;
const SIZE = 64 * 1024;
const leaked = [];

function leakyJsFunction(count) {
  for (let i = 0; i < count; i++) {
    leaked.push(Buffer.alloc(SIZE));
  }
  return leaked.length;
}

process.stdout.write(`ready ${process.pid}\n`);
process.stdin.once('data', () => {
  leakyJsFunction(LEAKS);
  process.stdout.write('done\n');
});
process.stdin.on('end', () => process.exit(0));
