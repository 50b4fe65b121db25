"""``python -m signticket.native``: build the oneDNN convolution library now (see :mod:`.build`)."""

from signticket.native.build import main

main()
