// DirectLeak.java - a Java service that leaks direct ByteBuffers from one
// named method, for the JVM test (tests/jvm.rs). Direct buffers are
// malloc'd by the JVM (Unsafe.allocateMemory -> os::malloc), so alloctrace
// sees them as heap blocks; the Java frames above that come from JIT code
// named through the JVM's perf map (`jcmd PID Compiler.perfmap`).
//
// Run with -XX:+PreserveFramePointer (JIT frames keep rbp as a frame
// pointer, so they can be walked), -XX:-BackgroundCompilation (the warm-up
// below returns only once leakyJavaMethod is compiled) and
// -XX:CompileCommand=dontinline,DirectLeak::leakyJavaMethod (it stays a
// frame of its own).
//
// Protocol: stdout "ready <pid>"; on the first stdin line, call
// leakyJavaMethod LEAKS times, print "done"; exit when stdin closes.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

public class DirectLeak {
    static final int LEAKS = 200;
    static final int SIZE = 64 * 1024;
    static final int WARM_UP_CALLS = 20_000;
    static final List<ByteBuffer> leaked = new ArrayList<>();

    static ByteBuffer leakyJavaMethod(int size) {
        ByteBuffer buffer = ByteBuffer.allocateDirect(size);
        leaked.add(buffer);
        return buffer;
    }

    public static void main(String[] args) throws Exception {
        // Compile leakyJavaMethod before tracing starts, then let go of the
        // warm-up's buffers: only the LEAKS below stay outstanding.
        for (int i = 0; i < WARM_UP_CALLS; i++) {
            leakyJavaMethod(1);
        }
        leaked.clear();
        System.gc();
        System.out.println("ready " + ProcessHandle.current().pid());
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        if (in.readLine() == null) {
            return;
        }
        for (int i = 0; i < LEAKS; i++) {
            leakyJavaMethod(SIZE);
        }
        System.out.println("done");
        System.out.flush();
        while (in.readLine() != null) {
        }
    }
}
