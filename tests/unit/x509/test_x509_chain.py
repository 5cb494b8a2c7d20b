"""order_chain puts the leaf first and each issuer after it, whatever order the CA sent."""

from __future__ import annotations

import itertools

import pytest
from cryptography import x509
from x509_pki import Issued, Pki

from certlc.x509 import find_by_public_key, is_issued_by, order_chain, same_public_key


def names(certs: list[x509.Certificate]) -> list[str]:
    return [c.subject.rfc4514_string() for c in certs]


@pytest.fixture(scope="module")
def chain4(pki: Pki) -> list[x509.Certificate]:
    return [i.cert for i in pki.chain(4, prefix="Four ")]


def test_leaf_first_chain_is_unchanged(chain4: list[x509.Certificate]) -> None:
    assert order_chain(chain4) == chain4


def test_reversed_chain_is_put_leaf_first(chain4: list[x509.Certificate]) -> None:
    assert order_chain(chain4[::-1]) == chain4


def test_every_shuffle_gives_the_same_order(chain4: list[x509.Certificate]) -> None:
    assert {tuple(names(order_chain(list(p)))) for p in itertools.permutations(chain4)} == {tuple(names(chain4))}


def test_unrelated_certificate_goes_last(pki: Pki, chain4: list[x509.Certificate]) -> None:
    stranger = pki.cert("stranger.example.org").cert
    for position in range(len(chain4) + 1):
        certs = [*chain4[:position], stranger, *chain4[position:]]
        assert order_chain(certs) == [*chain4, stranger]


def test_two_chains_in_one_bundle_each_leaf_first(pki: Pki, chain4: list[x509.Certificate]) -> None:
    other = [i.cert for i in pki.chain(2, prefix="Other ")]
    ordered = order_chain([other[1], chain4[2], other[0], chain4[0], chain4[3], chain4[1]])
    assert ordered == [*chain4, *other]  # the longer chain first


def test_duplicates_are_dropped(chain4: list[x509.Certificate]) -> None:
    assert order_chain([chain4[1], chain4[0], chain4[1], chain4[0], chain4[3], chain4[2]]) == chain4


def test_empty_and_single() -> None:
    assert order_chain([]) == []


def test_key_identifiers_pick_the_right_issuer_among_same_named_cas(pki: Pki) -> None:
    # A CA renewed with a new key keeps its name: only AKI/SKI tell the two apart.
    root = pki.cert("Root", ca=True)
    old_ca = pki.cert("Issuing CA", issuer=root, ca=True, days=400)
    new_ca = pki.cert("Issuing CA", issuer=root, ca=True, days=300, offset_days=100)
    leaf = pki.cert("host.example.com", issuer=old_ca)
    assert is_issued_by(leaf.cert, old_ca.cert) and not is_issued_by(leaf.cert, new_ca.cert)
    ordered = order_chain([new_ca.cert, root.cert, leaf.cert, old_ca.cert])
    assert ordered[:3] == [leaf.cert, old_ca.cert, root.cert]
    assert ordered[3] == new_ca.cert


def test_names_alone_link_when_key_identifiers_are_absent(pki: Pki) -> None:
    root = pki.cert("Old Root", ca=True, key_ids=False)
    leaf = pki.cert("old.example.com", issuer=root, key_ids=False)
    assert order_chain([root.cert, leaf.cert]) == [leaf.cert, root.cert]


def test_self_signed_root_ends_the_chain(pki: Pki) -> None:
    root = pki.cert("Cross Root", ca=True)
    assert not is_issued_by(root.cert, root.cert)
    assert order_chain([root.cert]) == [root.cert]


def test_issuer_loop_does_not_hang(pki: Pki) -> None:
    # Two CAs that cross-certify each other: every certificate is someone's issuer.
    a_key, b_key = pki.key(), pki.key()
    a_issuer = Issued(pki.cert("CA A", key=a_key, ca=True).cert, a_key)
    b_issuer = Issued(pki.cert("CA B", key=b_key, ca=True).cert, b_key)
    a_by_b = pki.cert("CA A", key=a_key, issuer=b_issuer, ca=True).cert
    b_by_a = pki.cert("CA B", key=b_key, issuer=a_issuer, ca=True).cert
    ordered = order_chain([a_by_b, b_by_a])
    assert sorted(names(ordered)) == ["CN=CA A", "CN=CA B"]
    assert order_chain([b_by_a, a_by_b]) == ordered


def test_find_by_public_key_finds_the_issued_certificate_not_by_position(pki: Pki, chain4: list[x509.Certificate]) -> None:
    key = pki.key()
    csr = pki.csr("new.example.com", key=key)
    issuer = pki.cert("Sub CA", ca=True)
    issued = pki.cert("new.example.com", key=key, issuer=issuer).cert
    bundle = [issuer.cert, *chain4, issued]
    assert find_by_public_key(bundle, csr) == issued
    assert find_by_public_key(bundle, key.public_key()) == issued
    assert find_by_public_key(chain4, csr) is None


def test_same_public_key_across_certificate_csr_and_key(pki: Pki) -> None:
    key = pki.key()
    cert = pki.cert("k.example.com", key=key).cert
    csr = pki.csr("k.example.com", key=key)
    assert same_public_key(cert, csr)
    assert same_public_key(csr, key.public_key())
    assert same_public_key(cert, key)
    assert not same_public_key(cert, pki.key().public_key())
