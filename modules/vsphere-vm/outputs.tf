output "names" {
  description = "VM names, in count order."
  value       = vsphere_virtual_machine.vm[*].name
}

output "ips" {
  description = "Each VM's default_ip_address, in count order."
  value       = vsphere_virtual_machine.vm[*].default_ip_address
}

output "ids" {
  description = "Each VM's id (its BIOS UUID), in count order."
  value       = vsphere_virtual_machine.vm[*].id
}
