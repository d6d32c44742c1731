"""XML signatures of CEB messages (DOMAIN.md §1.1): enveloped W3C XML-DSig over
the whole message, canonicalised with C14N 1.0, signed SM2-with-SM3 (the 2022
national-algorithm URIs) or RSA with SHA-1/SHA-256, the signer's X.509
certificate in KeyInfo.

`verify` checks that the message is what was signed (the digest of the
message without its Signature) and that the signature over SignedInfo was
made by the key of the certificate it carries, within that certificate's
validity. Who the certificate belongs to is reference data, not this module's
business: it returns the certificate's SHA-256 fingerprint, and R13 compares
it with the certificates the enterprise register lists for the sender's
copCode (processors/features.py, sender_unverified).

Everything here is pure Python over the standard library (SM3 comes from
hashlib's OpenSSL): no certificate parser or crypto package is needed for two
public-key operations per message. The SM2 arithmetic follows GB/T 32918.2
and GM/T 0003; `sign` exists for the simulator and tests.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from lxml import etree

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N_COMMENTS = C14N + "#WithComments"
ENVELOPED = DS_NS + "enveloped-signature"
SM2_SM3 = "http://www.chinaport.gov.cn/2022/04/xmldsig#sm2-sm3"
SM3 = "http://www.chinaport.gov.cn/2022/04/xmldsig#sm3"
RSA_SHA1 = DS_NS + "rsa-sha1"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA1 = DS_NS + "sha1"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

DIGESTS = {SM3: "sm3", SHA1: "sha1", SHA256: "sha256"}
SIGNATURES = {SM2_SM3: ("sm2", "sm3"), RSA_SHA1: ("rsa", "sha1"), RSA_SHA256: ("rsa", "sha256")}

# CEB900 returnStatus for a refused signature: the DXP transport's security
# codes (DOMAIN.md §2.4), negative as every format-check refusal.
ERR_INVALID = "-1001"  # unreadable, unsupported or incomplete signature or certificate
ERR_EXPIRED = "-1002"  # certificate outside its validity
ERR_MISMATCH = "-1004"  # the message or SignedInfo is not what was signed


class SignatureError(Exception):
    def __init__(self, status: str, reason: str, info: str):
        super().__init__(info)
        self.status, self.reason, self.info = status, reason, info


@dataclass(frozen=True)
class Signer:
    fingerprint: str  # SHA-256 of the certificate's DER, lower-case hex
    algorithm: str  # "sm2" or "rsa"
    key_name: str  # KeyInfo/KeyName as sent (a card or certificate number), "" if none
    not_after: float  # when the certificate expires (Unix time)


# --------------------------------------------------------------------------- DER

def _tlv(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at i."""
    if i + 2 > len(data):
        raise ValueError("DER element cut short")
    tag = data[i]
    n = data[i + 1]
    i += 2
    if n & 0x80:
        size = n & 0x7F
        if size == 0 or size > 4:
            raise ValueError("unsupported DER length")
        n = int.from_bytes(data[i:i + size], "big")
        i += size
    if i + n > len(data):
        raise ValueError("DER element runs past its container")
    return tag, i, i + n


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, s, e = _tlv(data, start)
        out.append((tag, s, e))
        start = e
    return out


def _oid(body: bytes) -> str:
    parts = [body[0] // 40, body[0] % 40]
    value = 0
    for b in body[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _time(tag: int, body: bytes) -> dt.datetime:
    text = body.decode("ascii")
    fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"  # UTCTime / GeneralizedTime
    return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc)


OID_RSA = "1.2.840.113549.1.1.1"
OID_EC = "1.2.840.10045.2.1"
OID_SM2_CURVE = "1.2.156.10197.1.301"


@dataclass(frozen=True)
class Certificate:
    der: bytes
    algorithm: str  # "rsa" or "sm2"
    key: tuple[int, int]  # RSA (n, e) or the SM2 point (x, y)
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def _tbs_fields(der: bytes) -> list[tuple[int, int, int]]:
    tag, s, e = _tlv(der, 0)
    tbs_tag, ts, te = _children(der, s, e)[0]
    fields = _children(der, ts, te)
    return fields[1:] if fields and fields[0][0] == 0xA0 else fields  # [0] version


def _validity(der: bytes, fields: list[tuple[int, int, int]]) -> tuple[dt.datetime, dt.datetime]:
    (t1, a, b), (t2, c, d) = _children(der, fields[3][1], fields[3][2])
    return _time(t1, der[a:b]), _time(t2, der[c:d])


def certificate_validity(der: bytes) -> tuple[dt.datetime, dt.datetime]:
    """notBefore and notAfter of an X.509 certificate of any key type
    (ValueError when it does not read): the TLS certificates' expiry."""
    try:
        return _validity(der, _tbs_fields(der))
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an X.509 certificate ({exc})") from None


def crl_next_update(der: bytes) -> dt.datetime | None:
    """nextUpdate of an X.509 CRL (RFC 5280 §5.1: when a newer one is due
    and this one stops counting), None when it names none; ValueError when
    it does not read."""
    try:
        tag, s, e = _tlv(der, 0)
        fields = _children(der, *_children(der, s, e)[0][1:])
        if fields and fields[0][0] == 0x02:  # version
            fields = fields[1:]
        # signature algorithm, issuer, thisUpdate, nextUpdate (optional)
        if len(fields) < 3 or fields[2][0] not in (0x17, 0x18):
            raise ValueError("no thisUpdate")
        if len(fields) > 3 and fields[3][0] in (0x17, 0x18):
            t, a, b = fields[3]
            return _time(t, der[a:b])
        return None
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an X.509 CRL ({exc})") from None


@functools.lru_cache(maxsize=256)
def parse_certificate(der: bytes) -> Certificate:
    """The public key and validity of an X.509 certificate (RFC 5280); nothing
    else of it is needed to verify a signature. Kept for the certificates
    last seen: an agent signs every message with the same one, and reading
    it (two dates parsed) is ~0.1 ms of the ~2.6 ms a verification takes."""
    try:
        fields = _tbs_fields(der)
        # serial, signature algorithm, issuer, validity, subject, subjectPublicKeyInfo
        (_, ks, ke) = fields[5]
        not_before, not_after = _validity(der, fields)
        (_, as_, ae), (bit_tag, bs, be) = _children(der, ks, ke)
        alg = _children(der, as_, ae)
        oid = _oid(der[alg[0][1]:alg[0][2]])
        bits = der[bs + 1:be]  # BIT STRING: the first byte counts unused bits (0)
        if bit_tag != 0x03:
            raise ValueError("public key is not a BIT STRING")
        if oid == OID_RSA:
            _, rs, re_ = _tlv(bits, 0)
            (_, ns, ne), (_, es, ee) = _children(bits, rs, re_)
            return Certificate(der, "rsa", (int.from_bytes(bits[ns:ne], "big"), int.from_bytes(bits[es:ee], "big")),
                               not_before, not_after)
        curve = _oid(der[alg[1][1]:alg[1][2]]) if len(alg) > 1 and alg[1][0] == 0x06 else ""
        if oid == OID_EC and curve == OID_SM2_CURVE and len(bits) == 65 and bits[0] == 4:
            point = (int.from_bytes(bits[1:33], "big"), int.from_bytes(bits[33:], "big"))
            if not _on_curve(point):
                raise ValueError("SM2 public key is not on the curve")
            return Certificate(der, "sm2", point, not_before, not_after)
        raise ValueError(f"unsupported public key (algorithm {oid}, curve {curve or '-'})")
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(ERR_INVALID, "certificate_invalid", f"the signer's certificate cannot be read: {exc}") \
            from None


# --------------------------------------------------------------------------- SM2 (GB/T 32918)

P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = P - 3
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
G = (0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
     0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0)
DEFAULT_ID = b"1234567812345678"  # GM/T 0009: the signer's ID when none is agreed


def _on_curve(pt: tuple[int, int]) -> bool:
    x, y = pt
    return 0 <= x < P and 0 <= y < P and (y * y - x * x * x - A * x - B) % P == 0


def _double(X: int, Y: int, Z: int) -> tuple[int, int, int]:
    # Jacobian doubling for a = -3.
    if Y == 0 or Z == 0:
        return 0, 1, 0
    zz = Z * Z % P
    m = 3 * (X - zz) * (X + zz) % P
    yy = Y * Y % P
    s = 4 * X * yy % P
    x3 = (m * m - 2 * s) % P
    return x3, (m * (s - x3) - 8 * yy * yy) % P, 2 * Y * Z % P


def _add(X1: int, Y1: int, Z1: int, x2: int, y2: int) -> tuple[int, int, int]:
    # Jacobian + affine.
    if Z1 == 0:
        return x2, y2, 1
    zz = Z1 * Z1 % P
    u2 = x2 * zz % P
    s2 = y2 * zz * Z1 % P
    h = (u2 - X1) % P
    r = (s2 - Y1) % P
    if h == 0:
        return _double(X1, Y1, Z1) if r == 0 else (0, 1, 0)
    hh = h * h % P
    hhh = h * hh % P
    v = X1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return x3, (r * (v - x3) - Y1 * hhh) % P, Z1 * h % P


def _affine(X: int, Y: int, Z: int) -> tuple[int, int] | None:
    if Z == 0:
        return None
    zi = pow(Z, -1, P)
    zi2 = zi * zi % P
    return X * zi2 % P, Y * zi2 * zi % P


@functools.lru_cache(maxsize=128)
def _table(point: tuple[int, int]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """j·16^i·point for every 4-bit window i (64) and digit j (1–15), affine: a
    scalar multiple is then 64 additions and no doubling. Built once per key
    (~45 ms and 180 KB; the generator and the last 128 keys are kept), it makes a
    verification ~4× faster than the double-and-add pass."""
    rows = []
    base = point
    for _ in range(64):
        row = [base]
        X, Y, Z = base[0], base[1], 1
        for _ in range(14):
            X, Y, Z = _add(X, Y, Z, *base)
            xy = _affine(X, Y, Z)
            if xy is None:  # only for a point of small order, which the curve has none of
                raise ValueError("degenerate point")
            row.append(xy)
        rows.append(tuple(row))
        X, Y, Z = _add(X, Y, Z, *base)  # 16·base
        nxt = _affine(X, Y, Z)
        if nxt is None:
            raise ValueError("degenerate point")
        base = nxt
    return tuple(rows)


def _mul2(k1: int, p1: tuple[int, int], k2: int, p2: tuple[int, int]) -> tuple[int, int] | None:
    """k1·p1 + k2·p2 (scalars below N) from the two points' window tables."""
    X, Y, Z = 0, 1, 0
    for k, p in ((k1, p1), (k2, p2)):
        rows = _table(p)
        i = 0
        while k:
            j = k & 15
            if j:
                X, Y, Z = _add(X, Y, Z, *rows[i][j - 1])
            k >>= 4
            i += 1
    return _affine(X, Y, Z)


def _sm3(data: bytes) -> bytes:
    return hashlib.new("sm3", data).digest()


def _z(point: tuple[int, int], uid: bytes) -> bytes:
    """Z_A: the hash of the signer's ID, the curve and the public key."""
    return _sm3(len(uid * 8).to_bytes(2, "big") + uid + b"".join(
        v.to_bytes(32, "big") for v in (A, B, G[0], G[1], point[0], point[1])))


def sm2_verify(point: tuple[int, int], message: bytes, r: int, s: int, uid: bytes = DEFAULT_ID) -> bool:
    if not (0 < r < N and 0 < s < N):
        return False
    t = (r + s) % N
    if t == 0:
        return False
    e = int.from_bytes(_sm3(_z(point, uid) + message), "big")
    xy = _mul2(s, G, t, point)
    return xy is not None and (e + xy[0]) % N == r


def sm2_public(d: int) -> tuple[int, int]:
    xy = _mul2(d % N, G, 0, G)
    assert xy is not None
    return xy


def sm2_sign(d: int, message: bytes, uid: bytes = DEFAULT_ID) -> tuple[int, int]:
    """An SM2 signature (r, s) by private key d; for the simulator and tests."""
    e = int.from_bytes(_sm3(_z(sm2_public(d), uid) + message), "big")
    while True:
        k = secrets.randbelow(N - 1) + 1
        x1 = sm2_public(k)[0]
        r = (e + x1) % N
        if r == 0 or r + k == N:
            continue
        s = pow(1 + d, -1, N) * (k - r * d) % N
        if s:
            return r, s


def _sm2_rs(value: bytes) -> tuple[int, int]:
    """SM2 signature values come as DER SEQUENCE {r, s} (OpenSSL, GM/T 0009) or
    as the bare 64 bytes r || s (many UKey clients): both are read."""
    if len(value) == 64:
        return int.from_bytes(value[:32], "big"), int.from_bytes(value[32:], "big")
    tag, s, e = _tlv(value, 0)
    parts = _children(value, s, e)
    if tag != 0x30 or e != len(value) or len(parts) != 2 or any(t != 0x02 for t, _, _ in parts):
        raise ValueError("not a DER SEQUENCE of two INTEGERs")
    return tuple(int.from_bytes(value[a:b], "big") for _, a, b in parts)  # type: ignore[return-value]


# --------------------------------------------------------------------------- RSA (PKCS #1 v1.5)

_DIGEST_INFO = {  # RFC 8017 §9.2, note 1
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
}


def rsa_verify(key: tuple[int, int], message: bytes, value: bytes, digest: str) -> bool:
    n, e = key
    size = (n.bit_length() + 7) // 8
    if len(value) != size:
        value = value.rjust(size, b"\0") if len(value) < size else value
    sig = int.from_bytes(value, "big")
    if sig >= n:
        return False
    t = _DIGEST_INFO[digest] + hashlib.new(digest, message).digest()
    expected = b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t
    return pow(sig, e, n).to_bytes(size, "big") == expected


# --------------------------------------------------------------------------- XML-DSig

def _q(name: str) -> str:
    return f"{{{DS_NS}}}{name}"


def _b64(text: str | None, what: str) -> bytes:
    try:
        return binascii.a2b_base64("".join((text or "").split()).encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SignatureError(ERR_INVALID, "signature_invalid", f"{what} is not Base64") from None


def _one(parent: Any, name: str, what: str) -> Any:
    found = parent.findall(_q(name))
    if len(found) != 1:
        raise SignatureError(ERR_INVALID, "signature_invalid", f"the signature needs exactly one {what}")
    return found[0]


def _algorithm(el: Any, allowed: dict[str, Any] | tuple[str, ...], what: str) -> str:
    alg = el.get("Algorithm", "")
    if alg not in allowed:
        raise SignatureError(ERR_INVALID, "signature_unsupported", f"unsupported {what} {alg!r}")
    return alg


def signed_content(root: Any, sig: Any, document: bool = True) -> bytes:
    """The message as the enveloped-signature transform sees it: the whole
    document without the Signature element (the text around it stays) and
    without comments (XML-DSig §4.4.3.2: URI="" leaves them out, whatever the
    canonicalization), canonicalised."""
    parent = sig.getparent()
    tail = sig.tail
    prev = sig.getprevious()
    # lxml drops an element's tail with the element; the transform keeps it.
    if tail:
        if prev is not None:
            prev.tail = (prev.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
    index = parent.index(sig)
    parent.remove(sig)
    try:
        # The document (XML-DSig's URI=""): C14N keeps the processing
        # instructions before and after the root element.
        return etree.tostring(root.getroottree() if document else root, method="c14n", with_comments=False)
    finally:
        if tail:
            if prev is not None:
                prev.tail = prev.tail[:len(prev.tail) - len(tail)] or None
            else:
                parent.text = parent.text[:len(parent.text) - len(tail)] or None
        parent.insert(index, sig)
        sig.tail = tail


def has_declaration(raw: bytes) -> bool:
    """Whether the bytes start with an XML declaration (not a processing
    instruction whose target starts with "xml")."""
    return raw.startswith(b"<?xml") and raw[5:6] in (b" ", b"\t", b"\n", b"\r")


# The CEB parser's settings (topics/ceb.py), keeping processing instructions:
# C14N keeps them, in the message and around it, so a signed message that has
# any is canonicalised from this parse.
_PI_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
    huge_tree=False, remove_comments=True, remove_pis=False,
)


def _prolog_end(raw: bytes) -> int | None:
    """Where the message starts after its XML declaration; None if it has a
    processing instruction anywhere (one scan of the bytes)."""
    declared = has_declaration(raw)
    if raw.find(b"<?", 1 if declared else 0) != -1:
        return None
    return raw.find(b"?>") + 2 if declared else 0


def _as_sent(raw: bytes, sig: Any, body_from: int) -> bytes | None:
    """The message as sent, without its Signature element, when that can be
    cut from the bytes for certain: then, if its digest is the signed one,
    those bytes are the canonical form that was signed, and canonicalising
    the tree again (most of a verification's cost) is not needed. Senders that
    write the canonical form, as the official samples are written, take this
    path; for any other the digest differs and the caller canonicalises.

    For certain means: no comment, CDATA section or processing instruction
    (where a '<' need not start a tag; `body_from` comes from _prolog_end,
    which found no processing instruction), so every '<' starts markup, and
    the Signature's start and end tags, with the prefix the parsed element
    has, each occur once: they are that element's. A message with a second
    element spelt the same way is canonicalised instead."""
    if b"<!" in raw:  # a comment or CDATA section (a DOCTYPE never gets here)
        return None
    prefix = (sig.prefix + ":") if sig.prefix else ""
    tag = f"<{prefix}Signature".encode()
    first = -1
    at = raw.find(tag, body_from)
    while at != -1:
        if raw[at + len(tag):at + len(tag) + 1] in (b">", b" ", b"\t", b"\n", b"\r"):  # not SignatureValue
            if first != -1:
                return None
            first = at
        at = raw.find(tag, at + 1)
    close_tag = f"</{prefix}Signature>".encode()
    if first == -1 or raw.count(close_tag) != 1:
        return None
    end = raw.find(close_tag) + len(close_tag)
    if end < first:
        return None
    return (raw[body_from:first].lstrip(b" \t\r\n") + raw[end:]).rstrip(b" \t\r\n")


def verify(root: Any, now: float, raw: bytes | None = None) -> Signer | None:
    """Verify the enveloped signature of a parsed CEB message, if it has one:
    the Signer, or SignatureError. `now` (epoch seconds) is held against the
    certificate's validity; `raw`, the UTF-8 bytes the tree was parsed from,
    spares canonicalising a message sent in canonical form."""
    sig = root.find(_q("Signature"))
    if sig is None:
        return None
    body_from = None if raw is None else _prolog_end(raw)
    if raw is not None and body_from is None:
        # Processing instructions are part of what was signed, and the CEB
        # parser dropped them: read the message again with them.
        root = etree.fromstring(raw, _PI_PARSER)
        sig = root.find(_q("Signature"))
    info = _one(sig, "SignedInfo", "SignedInfo")
    c14n = _algorithm(_one(info, "CanonicalizationMethod", "CanonicalizationMethod"), (C14N, C14N_COMMENTS),
                      "canonicalization")
    method = _algorithm(_one(info, "SignatureMethod", "SignatureMethod"), SIGNATURES, "signature method")
    ref = _one(info, "Reference", "Reference")
    if ref.get("URI") != "":
        raise SignatureError(ERR_INVALID, "signature_unsupported",
                             "the signature must cover the whole message (Reference URI=\"\")")
    transforms = ref.find(_q("Transforms"))
    names = [t.get("Algorithm", "") for t in (transforms if transforms is not None else ())]
    if ENVELOPED not in names or any(n not in (ENVELOPED, C14N, C14N_COMMENTS) for n in names):
        raise SignatureError(ERR_INVALID, "signature_unsupported",
                             "the signature's transforms must be enveloped-signature (and C14N)")
    digest = DIGESTS[_algorithm(_one(ref, "DigestMethod", "DigestMethod"), DIGESTS, "digest method")]
    expected = _b64(_one(ref, "DigestValue", "DigestValue").text, "DigestValue")
    value = _b64(_one(sig, "SignatureValue", "SignatureValue").text, "SignatureValue")
    key_info = sig.find(_q("KeyInfo"))
    certs = [] if key_info is None else key_info.findall(f"{_q('X509Data')}/{_q('X509Certificate')}")
    if not certs:
        raise SignatureError(ERR_INVALID, "signature_invalid", "the signature carries no X509Certificate in KeyInfo")
    cert = parse_certificate(_b64(certs[0].text, "X509Certificate"))
    kind, sig_digest = SIGNATURES[method]
    if kind != cert.algorithm:
        raise SignatureError(ERR_INVALID, "signature_invalid",
                             f"the signature method is {kind.upper()}, the certificate's key {cert.algorithm.upper()}")
    when = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if not cert.not_before <= when <= cert.not_after:
        raise SignatureError(ERR_EXPIRED, "certificate_expired",
                             f"the signer's certificate is valid {cert.not_before:%Y-%m-%d} to {cert.not_after:%Y-%m-%d}")
    as_sent = None if raw is None or body_from is None else _as_sent(raw, sig, body_from)
    try:
        if as_sent is None or hashlib.new(digest, as_sent).digest() != expected:
            forms = [signed_content(root, sig)]
            if root.getprevious() is not None or root.getnext() is not None:
                # Some signers (signxml) digest the root element alone, without the
                # processing instructions around it, which carry nothing read here.
                forms.append(signed_content(root, sig, document=False))
            if all(hashlib.new(digest, content).digest() != expected for content in forms):
                raise SignatureError(ERR_MISMATCH, "digest_mismatch", "the message is not what was signed: its "
                                     "digest differs from the signature's DigestValue")
        signed_info = etree.tostring(info, method="c14n", with_comments=c14n == C14N_COMMENTS)
    except etree.C14NError:
        # A well-formed, schema-valid message that C14N 1.0 refuses to
        # canonicalise: a namespace declared with a relative URI (xmlns:a="b"),
        # which the recommendation makes an error. No signer can have signed
        # its canonical form, and no digest can be checked.
        raise SignatureError(ERR_INVALID, "signature_invalid", "the message has no canonical form (C14N 1.0 "
                             "refuses it, e.g. for a namespace declared with a relative URI): its signature "
                             "cannot be verified") from None
    try:
        ok = (sm2_verify(cert.key, signed_info, *_sm2_rs(value)) if kind == "sm2"
              else rsa_verify(cert.key, signed_info, value, sig_digest))
    except ValueError as exc:
        raise SignatureError(ERR_INVALID, "signature_invalid", f"SignatureValue cannot be read: {exc}") from None
    if not ok:
        raise SignatureError(ERR_MISMATCH, "signature_mismatch",
                             "the signature does not verify with the key of the certificate it carries")
    key_name = key_info.findtext(_q("KeyName")) or ""
    return Signer(cert.fingerprint, kind, key_name.strip()[:64], cert.not_after.timestamp())


def sign_sm2(root: Any, d: int, cert_der: bytes, key_name: str = "") -> None:
    """Sign a parsed CEB message in place (SM2-with-SM3, enveloped, C14N),
    appending the Signature as the message's last element, as the XSD places it."""
    ds = f"{{{DS_NS}}}"
    sig = etree.SubElement(root, ds + "Signature", nsmap={"ds": DS_NS})
    info = etree.SubElement(sig, ds + "SignedInfo")
    etree.SubElement(info, ds + "CanonicalizationMethod", Algorithm=C14N)
    etree.SubElement(info, ds + "SignatureMethod", Algorithm=SM2_SM3)
    ref = etree.SubElement(info, ds + "Reference", URI="")
    transforms = etree.SubElement(ref, ds + "Transforms")
    etree.SubElement(transforms, ds + "Transform", Algorithm=ENVELOPED)
    etree.SubElement(ref, ds + "DigestMethod", Algorithm=SM3)
    digest_el = etree.SubElement(ref, ds + "DigestValue")
    value_el = etree.SubElement(sig, ds + "SignatureValue")
    key_info = etree.SubElement(sig, ds + "KeyInfo")
    if key_name:
        etree.SubElement(key_info, ds + "KeyName").text = key_name
    etree.SubElement(etree.SubElement(key_info, ds + "X509Data"), ds + "X509Certificate").text = \
        base64.b64encode(cert_der).decode("ascii")
    digest_el.text = base64.b64encode(_sm3(signed_content(root, sig))).decode("ascii")
    r, s = sm2_sign(d, etree.tostring(info, method="c14n"))
    value_el.text = base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode("ascii")
