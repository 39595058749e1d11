// leak.js - a Node.js workload that leaks Buffers from one named JS
// function, for the JIT frame test (tests/jit.rs). Run with
// `node --perf-basic-prof --interpreted-frames-native-stack leak.js`: V8
// then writes /tmp/perf-PID.map and names interpreted functions in it too
// (without the second flag, calls made before the function is compiled run
// inside one shared interpreter trampoline that the map cannot tell apart).
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
