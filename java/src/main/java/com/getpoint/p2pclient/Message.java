package com.getpoint.p2pclient;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One control message (docs/protocol.md, "Messages"): a JSON object tagged by {@code type},
 * checked against the field list of its type when parsed. Unknown fields are ignored.
 */
final class Message {
    /**
     * Largest control message, in bytes of UTF-8: the protocol's limit (a server drops a peer that
     * sends more), checked against the shared vectors' {@code max_message_bytes}.
     */
    static final int MAX_BYTES = 16 * 1024;
    /**
     * Every error code of the protocol, in the order of the shared vectors' {@code error_codes}
     * (the tests compare the two). {@link Control#refusal} says what each means to a caller.
     */
    static final List<String> ERROR_CODES = Collections.unmodifiableList(Arrays.asList(
            "bad_request", "not_found", "unsupported_version", "peer_offline", "id_taken", "secret_required",
            "secret_rejected", "peer_gone", "busy", "no_direct_path", "unauthorized", "rate_limited", "internal",
            "plain_refused"));

    private static final String MAPPINGS = "endpoint-independent|endpoint-dependent";
    /**
     * Per type: its fields as {@code name:kind}, a trailing {@code ?} marks optional ones. Every
     * message of the protocol is here, whoever sends it, so that the shared vectors check the
     * whole schema; the client acts on {@code punch}, {@code challenge} and {@code error}.
     */
    private static final String[][] FIELDS = {
        {"registered", "id:string", "public:address", "mapping:" + MAPPINGS + "?"},
        {"punch", "session:hex16", "key:hex32", "peer_public:address", "peer_private:addresses?",
            "you:address", "mode:punch|plain", "auth:secret|public", "nonce:string?", "proof:string?",
            "strategy:simultaneous|birthday_hard|birthday_easy|relay_only|mapped?", "your_mapping:" + MAPPINGS + "?",
            "peer_mapping:" + MAPPINGS + "?", "relay_after_ms:milliseconds?", "relay_ticket:hex16?",
            "peer_mapped:address?", "peer_public6:address?", "you6:address?", "peer_key:hex65?"},
        {"error", "code:code", "message:string"},
        {"reject", "session:string", "code:code", "message:string"},
        {"armed", "session:string"},
        // To an agent: nonce; to a client (plain mode): nonce and you; from an agent: session and nonce.
        {"challenge", "nonce:hex16", "you:address?", "session:string?"},
        {"prove", "signature:hex64"},
        {"plain_proof", "session:string", "signature:hex64"},
        {"result", "outcome:direct|lan|relayed|failed", "setup_ms:milliseconds?", "reason:string?"},
    };

    /** Per message type, the names of its fields (besides {@code type}), in the order of {@link #FIELDS}. */
    static Map<String, List<String>> fieldNames() {
        Map<String, List<String>> out = new LinkedHashMap<String, List<String>>();
        for (String[] spec : FIELDS) {
            List<String> names = new ArrayList<String>();
            for (int i = 1; i < spec.length; i++) {
                names.add(spec[i].substring(0, spec[i].indexOf(':')));
            }
            out.put(spec[0], Collections.unmodifiableList(names));
        }
        return Collections.unmodifiableMap(out);
    }

    /** The message type, e.g. {@code punch}. */
    final String type;
    private final Map<String, Object> fields;

    private Message(String type, Map<String, Object> fields) {
        this.type = type;
        this.fields = fields;
    }

    /**
     * Parses and checks one message.
     *
     * @throws P2pException saying what is wrong, if it is not a valid message
     */
    static Message parse(String text) throws P2pException {
        if (Codec.utf8(text).length > MAX_BYTES) {
            throw malformed("message over " + MAX_BYTES + " bytes");
        }
        Object value;
        try {
            value = Json.parse(text);
        } catch (IllegalArgumentException e) {
            throw malformed("not JSON: " + e.getMessage());
        }
        if (!(value instanceof Map)) {
            throw malformed("not a JSON object");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> json = (Map<String, Object>) value;
        Object type = json.get("type");
        if (!(type instanceof String)) {
            throw malformed("no string field 'type'");
        }
        for (String[] spec : FIELDS) {
            if (spec[0].equals(type)) {
                Map<String, Object> fields = new LinkedHashMap<String, Object>();
                fields.put("type", type);
                for (int i = 1; i < spec.length; i++) {
                    check(spec[0], spec[i], json, fields);
                }
                return new Message((String) type, fields);
            }
        }
        throw malformed("unknown message type '" + type + "'");
    }

    private static void check(String type, String spec, Map<String, Object> json, Map<String, Object> out)
            throws P2pException {
        boolean optional = spec.endsWith("?");
        String name = spec.substring(0, spec.indexOf(':'));
        String kind = spec.substring(name.length() + 1, spec.length() - (optional ? 1 : 0));
        Object v = json.get(name);
        if (v == null || v == Json.NULL) {
            if (!optional) {
                throw malformed("'" + type + "' has no field '" + name + "'");
            }
            if (kind.equals("addresses")) {
                out.put(name, new ArrayList<Object>());
            }
            return;
        }
        String bad = "'" + type + "' field '" + name + "' ";
        if (kind.equals("milliseconds")) {
            if (!(v instanceof Long) || (Long) v < 0 || (Long) v > Integer.MAX_VALUE) {
                throw malformed(bad + "is not a number of milliseconds");
            }
        } else if (kind.equals("addresses")) {
            if (!(v instanceof List)) {
                throw malformed(bad + "is not a list");
            }
            for (Object a : (List<?>) v) {
                checkAddress(bad, a);
            }
        } else if (!(v instanceof String)) {
            throw malformed(bad + "is not a string");
        } else if (kind.equals("address")) {
            checkAddress(bad, v);
        } else if (kind.startsWith("hex")) {
            int bytes = Integer.parseInt(kind.substring(3));
            if (Codec.unhex((String) v, bytes) == null) {
                throw malformed(bad + "is not " + bytes + " bytes of hex");
            }
        } else if (kind.equals("code")) {
            if (!ERROR_CODES.contains(v)) {
                throw malformed(bad + "has unknown error code '" + v + "'");
            }
        } else if (kind.indexOf('|') >= 0 && !Arrays.asList(kind.split("\\|")).contains(v)) {
            throw malformed(bad + "must be " + kind.replace("|", " or ") + ", not '" + v + "'");
        }
        out.put(name, v);
    }

    private static void checkAddress(String bad, Object a) throws P2pException {
        if (!(a instanceof String)) {
            throw malformed(bad + "holds a non-string address");
        }
        try {
            HostTuple.parse((String) a);
        } catch (IllegalArgumentException e) {
            throw malformed(bad + "is not an address: " + e.getMessage());
        }
    }

    private static P2pException malformed(String why) {
        return new P2pException(null, "malformed control message: " + why);
    }

    /** A string field, or null if absent. */
    String text(String name) {
        return (String) fields.get(name);
    }

    /** A number field, or {@code absent} if it is absent. */
    long number(String name, long absent) {
        Long v = (Long) fields.get(name);
        return v == null ? absent : v;
    }

    /** A hex field as bytes (only for fields checked as hex). */
    byte[] bytes(String name) {
        String hex = text(name);
        return Codec.unhex(hex, hex.length() / 2);
    }

    /** An address field (only for fields checked as an address). */
    HostTuple address(String name) {
        return HostTuple.parse(text(name));
    }

    /** An address list field (only for fields checked as addresses). */
    List<HostTuple> addresses(String name) {
        List<HostTuple> out = new ArrayList<HostTuple>();
        for (Object a : (List<?>) fields.get(name)) {
            out.add(HostTuple.parse((String) a));
        }
        return out;
    }

    /** The message as JSON, with its known fields only. */
    String toJson() {
        return Json.write(fields);
    }
}
