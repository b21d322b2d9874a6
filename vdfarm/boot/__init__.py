"""The network-boot path's configuration for stock parts: dnsmasq (DHCP and
TFTP) and the iPXE script that tries the farm's servers in turn."""
