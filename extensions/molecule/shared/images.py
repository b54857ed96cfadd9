"""Container images for testinfra tests of scenarios that run Docker inside the test host.

No registry is reachable from the test machine, so images are made inside the test host.
Use from a scenario's tests with:

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
    from images import busybox_image
"""


def busybox_image(host, tag="molecule/busybox:test"):
    """Import the static busybox of the test host as a one-file image and return its tag."""
    host.run_expect([0], "apt-get install -y -qq busybox-static >/dev/null")
    host.run_expect(
        [0],
        "set -e; d=$(mktemp -d); cp /bin/busybox $d/busybox; "
        f"tar -C $d -c busybox | docker import -c 'CMD [\"/busybox\",\"sh\"]' - {tag} >/dev/null; "
        "rm -rf $d",
    )
    return tag
