// A small CQL client for the local stack (infra/local/lib/cassandra.sh): the readiness probe of
// the Cassandra server, and a way to run a few statements from a shell script.
//
//   java -cp <dir of CqlProbe.class> CqlProbe HOST PORT [STATEMENT...]
//   java CqlProbe.java HOST PORT [STATEMENT...]          (source-file mode, slower)
//
// With no statement it runs `SELECT release_version FROM system.local` and prints the version.
// The rows of each statement are printed one per line, values separated by a tab. Exits 0 when
// every statement succeeded, 1 with a one-line reason on stderr otherwise.
//
// It speaks the CQL native protocol (version 4, served by Cassandra 2.2 to 5.x) directly over a
// socket with the JDK alone: no driver to fetch, and a run takes a few hundred milliseconds
// (a JVM with a full driver needs several seconds on a small machine), so it can be called once
// a second while the server starts, and fails at once while nothing listens. No authentication,
// TLS, compression or paging (at most 5000 rows a statement): the stack's node needs none.

import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.LocalDate;
import java.time.LocalTime;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;

public final class CqlProbe {
    private static final int VERSION = 4;
    private static final int OP_ERROR = 0x00, OP_STARTUP = 0x01, OP_READY = 0x02, OP_AUTHENTICATE = 0x03;
    private static final int OP_QUERY = 0x07, OP_RESULT = 0x08;
    private static final int CONSISTENCY_ONE = 0x0001;
    private static final int FLAG_WARNING = 0x08, FLAG_TRACING = 0x02, FLAG_CUSTOM_PAYLOAD = 0x04;

    private final DataInputStream in;
    private final DataOutputStream out;
    private int stream;

    private CqlProbe(Socket socket) throws IOException {
        in = new DataInputStream(socket.getInputStream());
        out = new DataOutputStream(socket.getOutputStream());
    }

    public static void main(String[] args) {
        if (args.length < 2) {
            System.err.println("usage: CqlProbe HOST PORT [STATEMENT...]");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        List<String> statements = new ArrayList<>(List.of(args).subList(2, args.length));
        if (statements.isEmpty()) {
            statements.add("SELECT release_version FROM system.local");
        }
        String current = "connect";
        try (Socket socket = new Socket()) {
            socket.setTcpNoDelay(true);
            socket.connect(new InetSocketAddress(host, port), 2000);
            socket.setSoTimeout(5_000);
            CqlProbe cql = new CqlProbe(socket);
            current = "STARTUP";
            cql.startup();
            // Generous: a schema change on a busy two-core machine can take seconds.
            socket.setSoTimeout(30_000);
            for (String statement : statements) {
                current = statement;
                for (String line : cql.query(statement)) {
                    System.out.println(line);
                }
            }
        } catch (IOException | RuntimeException e) {
            System.err.println("CqlProbe: " + host + ":" + port + ": " + current + ": " + e.toString().replace('\n', ' '));
            System.out.flush();
            System.exit(1);
        }
        System.out.flush();
    }

    private void startup() throws IOException {
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        DataOutputStream b = new DataOutputStream(body);
        b.writeShort(1);
        writeString(b, "CQL_VERSION");
        writeString(b, "3.0.0");
        ByteBuffer response = request(OP_STARTUP, body.toByteArray(), OP_READY);
        if (response == null) {
            throw new IOException("the server asks for authentication; the probe has none");
        }
    }

    private List<String> query(String cql) throws IOException {
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        DataOutputStream b = new DataOutputStream(body);
        byte[] text = cql.getBytes(StandardCharsets.UTF_8);
        b.writeInt(text.length);
        b.write(text);
        b.writeShort(CONSISTENCY_ONE);
        b.writeByte(0x04); // flags: page size
        b.writeInt(5000);
        ByteBuffer r = request(OP_QUERY, body.toByteArray(), OP_RESULT);
        List<String> lines = new ArrayList<>();
        int kind = r.getInt();
        if (kind != 0x0002) { // Void, Set_keyspace, Prepared, Schema_change: nothing to print.
            return lines;
        }
        int flags = r.getInt();
        int columns = r.getInt();
        if ((flags & 0x0002) != 0) { // has_more_pages: paging state
            bytes(r);
        }
        boolean global = (flags & 0x0001) != 0;
        boolean noMetadata = (flags & 0x0004) != 0;
        List<Type> types = new ArrayList<>();
        if (!noMetadata) {
            if (global) {
                string(r);
                string(r);
            }
            for (int i = 0; i < columns; i++) {
                if (!global) {
                    string(r);
                    string(r);
                }
                string(r); // column name
                types.add(Type.read(r));
            }
        }
        int rows = r.getInt();
        for (int row = 0; row < rows; row++) {
            StringBuilder line = new StringBuilder();
            for (int i = 0; i < columns; i++) {
                if (i > 0) {
                    line.append('\t');
                }
                ByteBuffer value = bytes(r);
                line.append(noMetadata ? hex(value) : format(types.get(i), value));
            }
            lines.add(line.toString());
        }
        return lines;
    }

    /** Sends one frame and returns the body of the answer; null for AUTHENTICATE. */
    private ByteBuffer request(int opcode, byte[] body, int expected) throws IOException {
        int id = stream++;
        out.writeByte(VERSION);
        out.writeByte(0);
        out.writeShort(id);
        out.writeByte(opcode);
        out.writeInt(body.length);
        out.write(body);
        out.flush();
        while (true) {
            int version = in.readUnsignedByte();
            int flags = in.readUnsignedByte();
            int respStream = in.readShort();
            int respOp = in.readUnsignedByte();
            int length = in.readInt();
            if ((version & 0x7f) != VERSION) {
                throw new IOException("unexpected protocol version " + (version & 0x7f) + " in the answer");
            }
            byte[] data = new byte[length];
            in.readFully(data);
            if (respStream != id) { // an event or an answer to something else: skip it
                continue;
            }
            ByteBuffer r = ByteBuffer.wrap(data);
            if ((flags & FLAG_TRACING) != 0) {
                r.position(r.position() + 16);
            }
            if ((flags & FLAG_WARNING) != 0) {
                int n = r.getShort();
                for (int i = 0; i < n; i++) {
                    System.err.println("CqlProbe: warning: " + string(r));
                }
            }
            if ((flags & FLAG_CUSTOM_PAYLOAD) != 0) {
                int n = r.getShort();
                for (int i = 0; i < n; i++) {
                    string(r);
                    bytes(r);
                }
            }
            if (respOp == OP_ERROR) {
                int code = r.getInt();
                throw new IOException(String.format("server error 0x%04x: %s", code, string(r)));
            }
            if (respOp == OP_AUTHENTICATE) {
                return null;
            }
            if (respOp != expected) {
                throw new IOException("unexpected answer opcode " + respOp);
            }
            return r;
        }
    }

    private static void writeString(DataOutputStream b, String s) throws IOException {
        byte[] bytes = s.getBytes(StandardCharsets.UTF_8);
        b.writeShort(bytes.length);
        b.write(bytes);
    }

    private static String string(ByteBuffer r) {
        byte[] bytes = new byte[r.getShort() & 0xffff];
        r.get(bytes);
        return new String(bytes, StandardCharsets.UTF_8);
    }

    private static ByteBuffer bytes(ByteBuffer r) {
        int n = r.getInt();
        if (n < 0) {
            return null;
        }
        ByteBuffer slice = r.slice();
        slice.limit(n);
        r.position(r.position() + n);
        return slice;
    }

    /** A CQL type from a result's metadata ([option] in the protocol spec). */
    private static final class Type {
        final int id;
        final String custom;
        final List<Type> params = new ArrayList<>();
        final List<String> names = new ArrayList<>();

        private Type(int id, String custom) {
            this.id = id;
            this.custom = custom;
        }

        static Type read(ByteBuffer r) {
            int id = r.getShort() & 0xffff;
            Type t = new Type(id, id == 0x0000 ? string(r) : null);
            switch (id) {
                case 0x0020: case 0x0022: // list, set
                    t.params.add(read(r));
                    break;
                case 0x0021: // map
                    t.params.add(read(r));
                    t.params.add(read(r));
                    break;
                case 0x0030: { // udt
                    string(r);
                    string(r);
                    int n = r.getShort();
                    for (int i = 0; i < n; i++) {
                        t.names.add(string(r));
                        t.params.add(read(r));
                    }
                    break;
                }
                case 0x0031: { // tuple
                    int n = r.getShort();
                    for (int i = 0; i < n; i++) {
                        t.params.add(read(r));
                    }
                    break;
                }
                default:
                    break;
            }
            return t;
        }
    }

    private static String format(Type t, ByteBuffer v) {
        if (v == null) {
            return "null";
        }
        try {
            switch (t.id) {
                case 0x0001: case 0x000D: // ascii, varchar
                    return StandardCharsets.UTF_8.decode(v).toString();
                case 0x0002: case 0x0005: // bigint, counter
                    return Long.toString(v.getLong());
                case 0x0004:
                    return Boolean.toString(v.get() != 0);
                case 0x0006: { // decimal
                    int scale = v.getInt();
                    return new BigDecimal(new BigInteger(remaining(v)), scale).toString();
                }
                case 0x0007:
                    return Double.toString(v.getDouble());
                case 0x0008:
                    return Float.toString(v.getFloat());
                case 0x0009:
                    return Integer.toString(v.getInt());
                case 0x000B: // timestamp
                    return Instant.ofEpochMilli(v.getLong()).toString();
                case 0x000C: case 0x000F: // uuid, timeuuid
                    return new UUID(v.getLong(), v.getLong()).toString();
                case 0x000E: // varint
                    return new BigInteger(remaining(v)).toString();
                case 0x0010: // inet
                    return InetAddress.getByAddress(remaining(v)).getHostAddress();
                case 0x0011: // date: days since the epoch, centred on 2^31
                    return LocalDate.ofEpochDay((v.getInt() & 0xffffffffL) - (1L << 31)).toString();
                case 0x0012: // time: nanoseconds since midnight
                    return LocalTime.ofNanoOfDay(v.getLong()).toString();
                case 0x0013:
                    return Short.toString(v.getShort());
                case 0x0014:
                    return Byte.toString(v.get());
                case 0x0020: case 0x0022: { // list, set
                    int n = v.getInt();
                    StringBuilder s = new StringBuilder(t.id == 0x0020 ? "[" : "{");
                    for (int i = 0; i < n; i++) {
                        s.append(i > 0 ? ", " : "").append(format(t.params.get(0), bytes(v)));
                    }
                    return s.append(t.id == 0x0020 ? "]" : "}").toString();
                }
                case 0x0021: { // map
                    int n = v.getInt();
                    StringBuilder s = new StringBuilder("{");
                    for (int i = 0; i < n; i++) {
                        s.append(i > 0 ? ", " : "").append(format(t.params.get(0), bytes(v)))
                                .append(": ").append(format(t.params.get(1), bytes(v)));
                    }
                    return s.append('}').toString();
                }
                case 0x0030: case 0x0031: { // udt, tuple: one [bytes] per field, trailing ones may be absent
                    StringBuilder s = new StringBuilder(t.id == 0x0030 ? "{" : "(");
                    for (int i = 0; i < t.params.size() && v.hasRemaining(); i++) {
                        s.append(i > 0 ? ", " : "");
                        if (t.id == 0x0030) {
                            s.append(t.names.get(i)).append(": ");
                        }
                        s.append(format(t.params.get(i), bytes(v)));
                    }
                    return s.append(t.id == 0x0030 ? "}" : ")").toString();
                }
                default: // blob, duration, custom types (vector...): hex
                    return hex(v);
            }
        } catch (IOException | RuntimeException e) {
            return hex(v.rewind());
        }
    }

    private static byte[] remaining(ByteBuffer v) {
        byte[] b = new byte[v.remaining()];
        v.get(b);
        return b;
    }

    private static String hex(ByteBuffer v) {
        if (v == null) {
            return "null";
        }
        StringBuilder s = new StringBuilder("0x");
        while (v.hasRemaining()) {
            s.append(String.format("%02x", v.get() & 0xff));
        }
        return s.toString();
    }
}
