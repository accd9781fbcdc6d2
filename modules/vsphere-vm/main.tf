# One or more VMs cloned from a template (a template VM, or an item of a content library), with guest
# customization (hostname, static IPv4 or DHCP, DNS). A root module: the provider is configured here from variables.

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
  use_library = var.content_library != null && var.content_library != ""

  # Terraform 1.0 has no preconditions and a validation block only sees its own variable, so
  # cross-variable rules are collected here. A non-empty list stops the plan: tobool() cannot
  # convert the message and Terraform prints it verbatim.
  input_errors = compact([
    local.use_cluster == local.use_host ? "Set exactly one of cluster or host (cluster = ${jsonencode(var.cluster)}, host = ${jsonencode(var.host)})." : "",
    local.static_ips && length(var.ipv4_addresses) != var.instances ? "ipv4_addresses has ${length(var.ipv4_addresses)} entries but instances is ${var.instances}: give one address per instance, or none for DHCP." : "",
    local.static_ips && length(distinct(var.ipv4_addresses)) != length(var.ipv4_addresses) ? "ipv4_addresses contains duplicates." : "",
    var.memory_reservation_mb > var.memory_mb ? "memory_reservation_mb (${var.memory_reservation_mb}) is more than memory_mb (${var.memory_mb})." : "",
    var.anti_affinity && !local.use_cluster ? "anti_affinity needs a cluster (DRS), but the VMs go to host ${jsonencode(var.host)}: set cluster instead of host." : "",
    local.use_library && var.datastore_cluster != "" ? "datastore_cluster cannot place VMs deployed from a content library item (the provider refuses it): use datastore, or a template VM." : "",
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

# The department folder must exist (a site's folders are the platform team's); a per-deployment folder is
# made here, below it, and removed with the VMs.
data "vsphere_folder" "department" {
  count = local.inputs_ok && var.department != "" ? 1 : 0
  path  = "/${var.datacenter}/vm/${local.department_folder}"
}

resource "vsphere_folder" "deployment" {
  count         = var.folder_per_deployment ? 1 : 0
  path          = "${local.department_folder}/${var.name_prefix}"
  type          = "vm"
  datacenter_id = data.vsphere_datacenter.dc.id
  depends_on    = [data.vsphere_folder.department]
}

data "vsphere_resource_pool" "pool" {
  count         = local.inputs_ok && var.resource_pool != "" ? 1 : 0
  name          = var.resource_pool
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_datastore_cluster" "pod" {
  count         = local.inputs_ok && var.datastore_cluster != "" ? 1 : 0
  name          = var.datastore_cluster
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_storage_policy" "policy" {
  count = local.inputs_ok && var.storage_policy != "" ? 1 : 0
  name  = var.storage_policy
}

data "vsphere_tag_category" "category" {
  for_each = local.inputs_ok ? toset([for tag in var.tags : split("/", tag)[0]]) : toset([])
  name     = each.key
}

data "vsphere_tag" "tag" {
  for_each    = local.inputs_ok ? toset(var.tags) : toset([])
  name        = split("/", each.key)[1]
  category_id = data.vsphere_tag_category.category[split("/", each.key)[0]].id
}

data "vsphere_custom_attribute" "attribute" {
  for_each = local.inputs_ok ? var.custom_attributes : {}
  name     = each.key
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

# The template: a template VM by inventory path, or with content_library an item of that library by name.
data "vsphere_virtual_machine" "template" {
  count         = local.use_library ? 0 : 1
  name          = var.template
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_content_library" "library" {
  count = local.inputs_ok && local.use_library ? 1 : 0
  name  = var.content_library
}

data "vsphere_content_library_item" "template" {
  count      = length(data.vsphere_content_library.library)
  name       = var.template
  library_id = data.vsphere_content_library.library[0].id
  # Required by the data source, which then reads the item's own type: OVF and VM template items both deploy.
  type = "ovf"
}

locals {
  department_folder = var.department != "" ? "${var.folder}/${var.department}" : var.folder
  # A plain string (known at plan time, so the run can note which VMs it is about to make); the VMs wait for
  # the folder through depends_on.
  vm_folder = var.folder_per_deployment ? "${local.department_folder}/${var.name_prefix}" : local.department_folder
  resource_pool_id = (var.resource_pool != "" ? data.vsphere_resource_pool.pool[0].id :
  local.use_cluster ? data.vsphere_compute_cluster.cluster[0].resource_pool_id : data.vsphere_host.host[0].resource_pool_id)
  # Pinning the host only makes sense for a standalone host; on a cluster DRS picks one.
  host_system_id = local.use_host ? data.vsphere_host.host[0].id : null

  # The template's hardware, which the VMs must keep, or the provider plans a change on every run. vSphere
  # cannot read it from a library item before the deploy: there the library_* variables say it.
  template_id        = local.use_library ? data.vsphere_content_library_item.template[0].id : data.vsphere_virtual_machine.template[0].id
  template_guest_id  = local.use_library ? local.library_guest_id : data.vsphere_virtual_machine.template[0].guest_id
  template_firmware  = local.use_library ? var.library_firmware : data.vsphere_virtual_machine.template[0].firmware
  template_scsi_type = local.use_library ? var.library_scsi_type : data.vsphere_virtual_machine.template[0].scsi_type
  template_nic_type  = local.use_library ? var.library_nic_type : data.vsphere_virtual_machine.template[0].network_interface_types[0]
  # A library deploy provisions the disk as asked (thin here); a clone keeps the template's.
  template_disk_thin  = local.use_library ? true : data.vsphere_virtual_machine.template[0].disks[0].thin_provisioned
  template_disk_eager = local.use_library ? false : data.vsphere_virtual_machine.template[0].disks[0].eagerly_scrub
  # A clone cannot shrink the template's disk; say so at plan time instead of failing mid-apply (a library
  # item's disk size is not known before the deploy: a smaller disk_gb fails the apply, vSphere shrinks no disk).
  template_disk_gb = local.use_library ? 0 : data.vsphere_virtual_machine.template[0].disks[0].size
  disk_gb          = var.disk_gb >= local.template_disk_gb ? var.disk_gb : tonumber("ERROR: disk_gb (${var.disk_gb}) is smaller than the template's disk (${local.template_disk_gb} GB).")
}

resource "vsphere_virtual_machine" "vm" {
  count = var.instances

  name             = "${var.name_prefix}-${count.index + 1}"
  folder           = local.vm_folder
  resource_pool_id = local.resource_pool_id
  host_system_id   = local.host_system_id
  # Storage DRS places the VM in a datastore cluster; otherwise the site's datastore.
  datastore_cluster_id = length(data.vsphere_datastore_cluster.pod) > 0 ? data.vsphere_datastore_cluster.pod[0].id : null
  datastore_id         = length(data.vsphere_datastore_cluster.pod) > 0 ? null : data.vsphere_datastore.ds.id
  storage_policy_id    = length(data.vsphere_storage_policy.policy) > 0 ? data.vsphere_storage_policy.policy[0].id : null
  tags                 = concat(var.tag_ids, [for tag in data.vsphere_tag.tag : tag.id])
  custom_attributes    = { for name, value in var.custom_attributes : data.vsphere_custom_attribute.attribute[name].id => value }
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
  guest_id  = local.template_guest_id
  firmware  = local.template_firmware
  scsi_type = local.template_scsi_type

  wait_for_guest_net_timeout = var.wait_for_guest_net_timeout

  network_interface {
    network_id   = data.vsphere_network.net.id
    adapter_type = local.template_nic_type
  }

  dynamic "network_interface" {
    for_each = data.vsphere_network.extra
    content {
      network_id   = network_interface.value.id
      adapter_type = local.template_nic_type
    }
  }

  disk {
    label             = "disk0"
    size              = local.disk_gb
    thin_provisioned  = local.template_disk_thin
    eagerly_scrub     = local.template_disk_eager
    storage_policy_id = length(data.vsphere_storage_policy.policy) > 0 ? data.vsphere_storage_policy.policy[0].id : null
  }

  dynamic "disk" {
    for_each = var.data_disk_gb
    content {
      label             = "disk${disk.key + 1}"
      unit_number       = disk.key + 1
      size              = disk.value
      datastore_id      = length(data.vsphere_datastore.data) > 0 ? data.vsphere_datastore.data[0].id : null
      storage_policy_id = length(data.vsphere_storage_policy.policy) > 0 ? data.vsphere_storage_policy.policy[0].id : null
      thin_provisioned  = true
    }
  }

  clone {
    template_uuid = local.template_id

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

  depends_on = [vsphere_folder.deployment]

  lifecycle {
    # The module never sets the swap placement (it stays "inherit"); the simulator reports it empty,
    # which would otherwise plan an update on every run.
    ignore_changes = [swap_placement_policy]
  }
}

# HA pairs: DRS keeps these VMs on different hosts of the cluster.
resource "vsphere_compute_cluster_vm_anti_affinity_rule" "spread" {
  count               = var.anti_affinity && local.use_cluster && var.instances > 1 ? 1 : 0
  name                = "${var.name_prefix}-spread"
  compute_cluster_id  = data.vsphere_compute_cluster.cluster[0].id
  virtual_machine_ids = vsphere_virtual_machine.vm[*].id
}
