# One or more VMs cloned from a template, with guest customization (hostname, static IPv4 or DHCP,
# DNS). A root module: the provider is configured here from variables.

provider "vsphere" {
  vsphere_server       = var.vsphere_server
  user                 = var.vsphere_user
  password             = var.vsphere_password
  allow_unverified_ssl = var.allow_unverified_ssl
}

locals {
  # null (an explicit JSON null) counts as unset, like "".
  use_cluster = var.cluster != null && var.cluster != ""
  use_host    = var.host != null && var.host != ""
  static_ips  = length(var.ipv4_addresses) > 0

  # Terraform 1.0 has no preconditions and a validation block only sees its own variable, so
  # cross-variable rules are collected here. A non-empty list stops the plan: tobool() cannot
  # convert the message and Terraform prints it verbatim.
  input_errors = compact([
    local.use_cluster == local.use_host ? "Set exactly one of cluster or host (cluster = ${jsonencode(var.cluster)}, host = ${jsonencode(var.host)})." : "",
    local.static_ips && length(var.ipv4_addresses) != var.instances ? "ipv4_addresses has ${length(var.ipv4_addresses)} entries but instances is ${var.instances}: give one address per instance, or none for DHCP." : "",
    local.static_ips && length(distinct(var.ipv4_addresses)) != length(var.ipv4_addresses) ? "ipv4_addresses contains duplicates." : "",
    var.memory_reservation_mb > var.memory_mb ? "memory_reservation_mb (${var.memory_reservation_mb}) is more than memory_mb (${var.memory_mb})." : "",
  ])
  inputs_ok = length(local.input_errors) == 0 ? true : tobool("ERROR: ${join(" ", local.input_errors)}")

  # Every data source below waits on inputs_ok, so bad input fails before anything is read.
  placement_cluster = local.inputs_ok && local.use_cluster ? 1 : 0
  placement_host    = local.inputs_ok && local.use_host ? 1 : 0
}

data "vsphere_datacenter" "dc" {
  name = local.inputs_ok ? var.datacenter : null
}

data "vsphere_compute_cluster" "cluster" {
  count         = local.placement_cluster
  name          = var.cluster
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_host" "host" {
  count         = local.placement_host
  name          = var.host
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_datastore" "ds" {
  name          = var.datastore
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_network" "net" {
  name          = var.network
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_network" "extra" {
  count         = length(var.extra_networks)
  name          = var.extra_networks[count.index]
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_datastore" "data" {
  count         = var.data_disk_datastore != "" && length(var.data_disk_gb) > 0 ? 1 : 0
  name          = var.data_disk_datastore
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_virtual_machine" "template" {
  name          = var.template
  datacenter_id = data.vsphere_datacenter.dc.id
}

locals {
  resource_pool_id = local.use_cluster ? data.vsphere_compute_cluster.cluster[0].resource_pool_id : data.vsphere_host.host[0].resource_pool_id
  # Pinning the host only makes sense for a standalone host; on a cluster DRS picks one.
  host_system_id = local.use_host ? data.vsphere_host.host[0].id : null

  template_disk_gb = data.vsphere_virtual_machine.template.disks[0].size
  # A clone cannot shrink the template's disk; say so at plan time instead of failing mid-apply.
  disk_gb = var.disk_gb >= local.template_disk_gb ? var.disk_gb : tonumber("ERROR: disk_gb (${var.disk_gb}) is smaller than the template's disk (${local.template_disk_gb} GB).")
}

resource "vsphere_virtual_machine" "vm" {
  count = var.instances

  name             = "${var.name_prefix}-${count.index + 1}"
  folder           = var.folder
  resource_pool_id = local.resource_pool_id
  host_system_id   = local.host_system_id
  datastore_id     = data.vsphere_datastore.ds.id
  tags             = var.tag_ids
  # A variable's value is never a template: "${...}" and "%{...}" in the notes stay literal text.
  # vSphere cannot clear notes through the provider (an empty annotation is left out of the reconfigure
  # spec): no notes are kept as one space, so a note that is removed is removed from vCenter too.
  annotation = var.annotation == "" ? " " : var.annotation

  num_cpus               = var.cpu
  memory                 = var.memory_mb
  cpu_hot_add_enabled    = var.cpu_hot_add
  memory_hot_add_enabled = var.memory_hot_add
  cpu_reservation        = var.cpu_reservation_mhz
  memory_reservation     = var.memory_reservation_mb
  # Hardware that must match the template, or the provider plans a change on every run.
  guest_id  = data.vsphere_virtual_machine.template.guest_id
  firmware  = data.vsphere_virtual_machine.template.firmware
  scsi_type = data.vsphere_virtual_machine.template.scsi_type

  wait_for_guest_net_timeout = var.wait_for_guest_net_timeout

  network_interface {
    network_id   = data.vsphere_network.net.id
    adapter_type = data.vsphere_virtual_machine.template.network_interface_types[0]
  }

  dynamic "network_interface" {
    for_each = data.vsphere_network.extra
    content {
      network_id   = network_interface.value.id
      adapter_type = data.vsphere_virtual_machine.template.network_interface_types[0]
    }
  }

  disk {
    label            = "disk0"
    size             = local.disk_gb
    thin_provisioned = data.vsphere_virtual_machine.template.disks[0].thin_provisioned
    eagerly_scrub    = data.vsphere_virtual_machine.template.disks[0].eagerly_scrub
  }

  dynamic "disk" {
    for_each = var.data_disk_gb
    content {
      label            = "disk${disk.key + 1}"
      unit_number      = disk.key + 1
      size             = disk.value
      datastore_id     = length(data.vsphere_datastore.data) > 0 ? data.vsphere_datastore.data[0].id : null
      thin_provisioned = true
    }
  }

  clone {
    template_uuid = data.vsphere_virtual_machine.template.id

    customize {
      timeout = var.customize_timeout

      # One identity, by the template's guest family (windows.tf): the provider refuses the other.
      dynamic "linux_options" {
        for_each = local.windows ? [] : [1]
        content {
          host_name = "${var.name_prefix}-${count.index + 1}"
          domain    = var.domain
        }
      }

      dynamic "windows_options" {
        for_each = local.windows ? [1] : []
        content {
          computer_name  = "${var.computer_name_prefix}-${count.index + 1}"
          admin_password = var.windows_admin_password != "" ? var.windows_admin_password : null
          time_zone      = local.windows_time_zone_index
          # A domain join, or a workgroup: the provider refuses both at once.
          workgroup             = local.join_domain ? null : var.windows_workgroup
          join_domain           = local.join_domain ? var.windows_domain : null
          domain_admin_user     = local.join_domain ? var.windows_join_user : null
          domain_admin_password = local.join_domain ? var.windows_join_password : null
        }
      }

      # An empty address (null) makes the provider configure DHCP on the NIC.
      network_interface {
        ipv4_address = local.static_ips ? var.ipv4_addresses[count.index] : null
        ipv4_netmask = local.static_ips ? var.ipv4_netmask : null
      }

      # One customization entry per NIC, in order: the extra NICs take DHCP.
      dynamic "network_interface" {
        for_each = var.extra_networks
        content {}
      }

      ipv4_gateway    = var.ipv4_gateway != null && var.ipv4_gateway != "" ? var.ipv4_gateway : null
      dns_server_list = var.dns_servers
      dns_suffix_list = var.dns_suffixes
    }
  }

  lifecycle {
    # The module never sets the swap placement (it stays "inherit"); the simulator reports it empty,
    # which would otherwise plan an update on every run.
    ignore_changes = [swap_placement_policy]
  }
}
